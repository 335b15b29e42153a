"""HLS attention kernel, C-simulated with g++ through ctypes, bit-exact against the golden model.

The vectors are the RTL tests' own cases (``tessera.sim.attention.AttentionCase``, same seeds),
so golden model, RTL and C-simulation are checked on the same data.
"""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

import tessera.hls.attention as hls_attention
from tessera.hls.attention import (
    attention_from_beats,
    attention_stream_case,
    attention_stream_inputs,
    csim_attention,
)
from tessera.hls.csim import CsimError, CsimLibrary, build_csim, compile_cpp
from tessera.hls.engine import OutputBeats
from tessera.hls.generate import generate_hls, kernel_header_text, render_hls
from tessera.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    attention_streams,
)
from tessera.models.gemm import Requant
from tessera.models.rounding import Overflow, Rounding
from tessera.models.softmax import LOG2E_FRAC, exp2_lut
from tessera.sim.attention import AttentionCase

CAUSAL = AttentionMask("causal")
LAMBDA = AttentionMask("lambda", sink=1, window=2)
SATURATING = Requant(1 << 30, 29)  # raw logit = 2 * q.k: the spike saturates the score format


def _rtl_config(parallelism: int) -> AttentionConfig:
    """The RTL tests' configs: two beats per row, max_seq admits S = 129."""
    return AttentionConfig(head_dim=4, lanes=2, parallelism=parallelism, max_seq=136)


#: Formats away from the defaults: two heads, P not a power of two, one beat per row, a short
#: exp table without interpolation, convergent rounding and symmetric saturation of the logits.
FORMAT_CONFIG = AttentionConfig(
    head_dim=8,
    heads=2,
    lanes=8,
    parallelism=3,
    max_seq=40,
    score_bits=10,
    score_frac=4,
    exp_frac=10,
    lut_bits=3,
    interp_bits=0,
    weight_bits=10,
    weight_frac=8,
    rounding=Rounding.RND_CONV,
    overflow=Overflow.SAT_SYM,
)
#: Wide formats: long exp table with interpolation, 24-bit weights (wide accumulators).
WIDE_CONFIG = AttentionConfig(
    head_dim=6,
    lanes=3,
    parallelism=2,
    max_seq=24,
    score_bits=20,
    score_frac=12,
    exp_frac=20,
    lut_bits=8,
    interp_bits=10,
    weight_bits=24,
    weight_frac=20,
    rounding=Rounding.TRN,
)
PARALLELISMS = (1, 2, 4)
ALL_CONFIGS = [*(_rtl_config(p) for p in PARALLELISMS), FORMAT_CONFIG, WIDE_CONFIG]


@pytest.fixture(scope="module")
def library() -> CsimLibrary:
    """One C-sim library holding every config of ALL_CONFIGS."""
    return build_csim(ALL_CONFIGS)


def _rtl_cases(p: int) -> list[AttentionCase]:
    """The cases of tests/sim/test_attention_rtl.py (same seeds, so the same operands)."""
    return [
        AttentionCase(1, seed=1, name="S=1"),
        AttentionCase(2 * p + 1, seed=2, mask=CAUSAL, name="odd S causal"),
        AttentionCase(p + 3, seed=3, mask=LAMBDA, name="lambda"),
        AttentionCase(5, seed=4, data="extreme", requant=SATURATING, name="one huge logit"),
        AttentionCase(p + 2, seed=5, data="equal", mask=CAUSAL, name="equal"),
        AttentionCase(
            129, seed=6, mask=AttentionMask("lambda", sink=3, window=20), name="S=129 lambda"
        ),
    ]


def _check(cfg: AttentionConfig, case: AttentionCase, library: CsimLibrary) -> np.ndarray:
    q, k, v = case.operands(cfg)
    requant = case.score_requant(cfg)
    got = csim_attention(cfg, q, k, v, requant, case.mask, library=library)
    want = attention(q, k, v, cfg, requant, case.mask)
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    assert not bad.size, (
        f"{cfg.short_name} {case.label}: first mismatch at (head, row, element) "
        f"{tuple(bad[0])}: expected {want[tuple(bad[0])]}, received {got[tuple(bad[0])]}"
    )
    return want


@pytest.mark.parametrize("p", PARALLELISMS)
def test_rtl_cases_bit_exact(library, p):
    cfg = _rtl_config(p)
    outputs = [_check(cfg, case, library) for case in _rtl_cases(p)]
    # The extreme case saturates the outputs at both int8 limits.
    assert outputs[3].min() == -128 and outputs[3].max() == 127


@pytest.mark.parametrize("p", PARALLELISMS)
def test_masks_and_lengths(library, p):
    """Every mask kind on odd and long S, sink / window at and past their limits."""
    cfg = _rtl_config(p)
    masks = [
        AttentionMask(),
        CAUSAL,
        AttentionMask("lambda", sink=0, window=1),  # each query sees only itself
        AttentionMask("lambda", sink=5, window=3),
        AttentionMask("lambda", sink=136, window=136),  # acts as causal
        AttentionMask("lambda", sink=2**32 - 1, window=2**32 - 1),
    ]
    for i, mask in enumerate(masks):
        for s in (1, 2, p + 1, 7, 33) if i % 2 else (1, p, 2 * p + 1, 129):
            _check(cfg, AttentionCase(s, seed=100 + i * 10 + s, mask=mask), library)


@pytest.mark.parametrize("cfg", [FORMAT_CONFIG, WIDE_CONFIG], ids=["narrow", "wide"])
def test_formats(library, cfg):
    for seed, (s, mask, data, requant) in enumerate(
        [
            (1, AttentionMask(), "random", None),
            (cfg.max_seq, AttentionMask(), "random", None),
            (2 * cfg.parallelism + 1, CAUSAL, "random", None),
            (11, AttentionMask("lambda", sink=2, window=3), "random", None),
            (9, AttentionMask(), "extreme", SATURATING),
            (7, CAUSAL, "extreme", Requant(1 << 30, 36)),
            (cfg.parallelism + 2, AttentionMask(), "equal", None),
            (13, AttentionMask("lambda", sink=1, window=4), "equal", None),
            (cfg.max_seq - 1, CAUSAL, "random", Requant(2**31 - 1, 63)),  # all logits 0
        ]
    ):
        case = AttentionCase(s, seed=200 + seed, mask=mask, data=data, requant=requant)
        _check(cfg, case, library)


def test_random_soak(library):
    """Random lengths, masks, data kinds and score scales on every config."""
    rng = np.random.default_rng(7)
    for cfg in ALL_CONFIGS:
        for i in range(4):
            kind = ["none", "causal", "lambda"][int(rng.integers(3))]
            mask = AttentionMask(kind, int(rng.integers(0, 6)), int(rng.integers(1, 12)))
            requant = (
                None if i % 2 else Requant(int(rng.integers(1, 2**31)), int(rng.integers(20, 40)))
            )
            case = AttentionCase(
                int(rng.integers(1, min(cfg.max_seq, 40) + 1)),
                seed=300 + i,
                mask=mask,
                data=["random", "extreme", "equal"][int(rng.integers(3))],
                requant=requant,
            )
            _check(cfg, case, library)


def test_o_stream_matches_the_rtl_protocol(library):
    """Beats, keep and last of o are exactly models.attention.output_beats, last at the end;
    q, k and v are read exactly to their ends (the C-sim entry checks every input)."""
    cfg = FORMAT_CONFIG
    q, k, v = AttentionCase(8, seed=9).operands(cfg)
    requant = AttentionCase(8).score_requant(cfg)
    inputs, scalars = attention_stream_inputs(cfg, q, k, v, requant, CAUSAL)
    streams = attention_streams(q, k, v, cfg, attention(q, k, v, cfg, requant, CAUSAL))
    # K and V are replayed once per group: ceil(8 / 3) = 3 times per head.
    assert len(inputs["k"]) == cfg.heads * 3 * 8 * cfg.beats_per_row
    o = library.run(cfg, inputs, scalars, {"o": len(streams["o"])})["o"]
    np.testing.assert_array_equal(o.values, streams["o"])
    assert o.valid.all()
    assert o.last.tolist() == [False] * (len(streams["o"]) - 1) + [True]


def test_kernel_reads_each_input_exactly(library):
    cfg = _rtl_config(2)
    q, k, v = AttentionCase(5, seed=12).operands(cfg)
    inputs, scalars = attention_stream_inputs(cfg, q, k, v, Requant(1 << 30, 40))
    beats = 5 * cfg.beats_per_row
    longer = dict(inputs, q=np.concatenate([inputs["q"], inputs["q"][:1]]))
    with pytest.raises(CsimError, match=r"stream q: the kernel read 10 of its 11 beats"):
        library.run(cfg, longer, scalars, {"o": beats})
    shorter = dict(inputs, v=inputs["v"][:-1])
    with pytest.raises(CsimError, match=r"stream v: the kernel read past its 29 beats"):
        library.run(cfg, shorter, scalars, {"o": beats})
    with pytest.raises(CsimError, match=r"stream o: 10 beats, more than the 9 expected"):
        library.run(cfg, inputs, scalars, {"o": beats - 1})


def test_refused_settings_run_nothing(library):
    """Settings the RTL refuses with ERROR read and write no beat."""
    cfg = _rtl_config(2)
    empty = {name: np.zeros((0, cfg.lanes), np.uint8) for name in "qkv"}
    ok = dict(seq_len=3, multiplier=1 << 30, shift=30, mask=0, sink=0, window=0)
    for change in [
        dict(seq_len=0),
        dict(seq_len=cfg.max_seq + 1),
        dict(seq_len=255),
        dict(mask=3),
        dict(mask=2, window=0),
    ]:
        result = library.run(cfg, empty, dict(ok, **change), {"o": 8})
        assert len(result["o"].values) == 0, change


def test_from_beats_checks_the_protocol():
    cfg = _rtl_config(1)
    values = np.zeros((6, cfg.lanes), np.int64)
    valid = np.ones((6, cfg.lanes), bool)
    last = np.array([0, 0, 0, 0, 0, 1], bool)
    out = attention_from_beats(cfg, 3, OutputBeats(values, valid, last))
    assert out.shape == (1, 3, 4)
    with pytest.raises(ValueError, match="o stream has 5 beats, expected 6"):
        attention_from_beats(cfg, 3, OutputBeats(values[:5], valid[:5], last[:5]))
    with pytest.raises(ValueError, match="o beat 2: keep marks lanes"):
        attention_from_beats(
            cfg, 3, OutputBeats(values, valid & (np.arange(6) != 2)[:, None], last)
        )
    with pytest.raises(ValueError, match="o beat 1: last=True, expected False"):
        attention_from_beats(cfg, 3, OutputBeats(values, valid, last | (np.arange(6) == 1)))


def test_bad_inputs_raise_value_error(library):
    cfg = _rtl_config(2)
    q = np.zeros((1, 3, 4), np.int8)
    rq = Requant(1 << 30, 30)
    with pytest.raises(ValueError, match="score_requant must be a Requant"):
        csim_attention(cfg, q, q, q, (1, 2, 0), library=library)
    with pytest.raises(ValueError, match="zero_point must be 0"):
        csim_attention(cfg, q, q, q, Requant(1, 1, 3), library=library)
    with pytest.raises(ValueError, match="mask must be an AttentionMask"):
        csim_attention(cfg, q, q, q, rq, "causal", library=library)
    with pytest.raises(ValueError, match="outside int8"):
        csim_attention(cfg, q, np.full((1, 3, 4), 200, np.int16), q, rq, library=library)
    with pytest.raises(ValueError, match="sequence length 137"):
        z = np.zeros((1, 137, 4), np.int8)
        csim_attention(cfg, z, z, z, rq, library=library)
    with pytest.raises(ValueError, match="the config expects"):
        z = np.zeros((1, 3, 8), np.int8)
        csim_attention(cfg, z, z, z, rq, library=library)
    with pytest.raises(ValueError, match="cfg must be an AttentionConfig"):
        csim_attention("attention", q, q, q, rq)


# ---- generated Vitis HLS project -----------------------------------------------------------


def test_config_header_matches_the_config():
    for cfg in (FORMAT_CONFIG, WIDE_CONFIG):
        files = render_hls(cfg)
        header = files[f"{cfg.short_name}_config.h"]
        members = dict(
            (name, value)
            for _ctype, name, value in re.findall(r"static const (\w+) (\w+) = (\w+);", header)
        )
        sm = cfg.softmax
        expected = {
            "heads": cfg.heads,
            "head_dim": cfg.head_dim,
            "lanes": cfg.lanes,
            "parallelism": cfg.parallelism,
            "max_seq": cfg.max_seq,
            "seq_bits": cfg.max_seq.bit_length(),
            "score_bits": cfg.score_bits,
            "dot_bits": cfg.dot_bits,
            "acc_bits": cfg.acc_bits,
            "prob_shift": sm.prob_shift,
            "weight_bits": cfg.weight_bits,
            "weight_frac": cfg.weight_frac,
            "in_bits": cfg.score_bits,
            "in_frac": cfg.score_frac,
            "exp_frac": cfg.exp_frac,
            "lut_bits": cfg.lut_bits,
            "interp_bits": cfg.interp_bits,
            "log2e_frac": LOG2E_FRAC,
            "recip_frac": sm.recip_frac,
            "recip_bits": sm.recip_bits,
            "sum_bits": sm.sum_bits,
        }
        for name, value in expected.items():
            assert members[name] == f"{value}u", name
        assert members["rounding"] == f"AP_{cfg.rounding.value}"
        assert members["overflow"] == f"AP_{cfg.overflow.value}"
        # The exp2 ROM is the golden model's own table.
        table = [int(members[f"exp2_{k:03x}"].rstrip("u")) for k in range(len(exp2_lut(sm)))]
        assert table == exp2_lut(sm).tolist()
        assert f"struct {cfg.short_name}_config : tessera::attention_config {{" in header
    assert "#pragma HLS PIPELINE II = 1" in kernel_header_text("attention.h")


@pytest.fixture(scope="module")
def testbench_project(tmp_path_factory):
    """A project with the default vectors plus the RTL tests' cases, and its compiled testbench."""
    cfg = _rtl_config(2)
    cases = hls_attention.ENGINE.default_cases(cfg)
    for case in _rtl_cases(2):
        q, k, v = case.operands(cfg)
        cases.append(
            attention_stream_case(cfg, q, k, v, case.score_requant(cfg), case.mask, case.label)
        )
    out = tmp_path_factory.mktemp("attention_tb")
    result = generate_hls(cfg, out, cases=cases)
    files = {
        str(p.relative_to(out)): p.read_text()
        for p in out.rglob("*")
        if p.suffix in (".cpp", ".h") and p.name != "csim.cpp"
    }
    build = compile_cpp(
        files, ["tb.cpp", f"{result['top']}.cpp"], name="test_attention_tb", kind="executable"
    )
    return cfg, out, result, build.path, len(cases)


def test_generated_project_is_complete(testbench_project):
    cfg, out, result, _, count = testbench_project
    top = cfg.short_name
    assert result["engine"] == "attention" and result["top"] == top
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for name in [
        f"{top}.cpp",
        f"{top}_config.h",
        "csim.cpp",
        "tb.cpp",
        "run_hls.tcl",
        "Makefile",
        "README.md",
        "config.json",
        "tb_data/inputs.txt",
        "tb_data/expected.txt",
        "tb_data/cases.txt",
        "include/tessera/attention.h",
        "include/tessera/exp.h",
        "include/tessera/requant.h",
        "include/tessera/axis.h",
        "include/tessera/stream_io.h",
    ]:
        assert name in written, name
    source = (out / f"{top}.cpp").read_text()
    for port in "qkvo":
        assert f"#pragma HLS INTERFACE mode=axis port={port}\n" in source
    for scalar in ("seq_len", "multiplier", "shift", "mask", "sink", "window"):
        assert f"#pragma HLS INTERFACE mode=s_axilite port={scalar} bundle=control\n" in source
    assert len((out / "tb_data" / "cases.txt").read_text().splitlines()) == count


def test_testbench_passes_on_golden_vectors(testbench_project):
    _, out, _, program, count = testbench_project
    run = subprocess.run([str(program)], cwd=out, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"PASS: {count} cases" in run.stdout
    assert run.stdout.count(": pass") == count


def test_testbench_fails_on_a_wrong_value(testbench_project, tmp_path):
    _, out, _, program, _ = testbench_project
    data = tmp_path / "tb_data"
    data.mkdir()
    for name in ("inputs.txt", "cases.txt"):
        (data / name).write_text((out / "tb_data" / name).read_text())
    lines = (out / "tb_data" / "expected.txt").read_text().splitlines()
    # Line 2 is the first case's beat count, line 3 its first beat: change lane 0.
    fields = lines[2].split()
    fields[0] = str(int(fields[0]) + 1)
    lines[2] = " ".join(fields)
    (data / "expected.txt").write_text("\n".join(lines) + "\n")
    run = subprocess.run([str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert f"first mismatch at beat 0 lane 0: expected {fields[0]}" in run.stdout
