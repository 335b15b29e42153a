"""Building C-simulation libraries: cache, compile errors, missing tools, concurrent builders."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tessera.hls.csim import CsimError, build_csim, compile_cpp, csim_gemm
from tessera.hls.generate import hls_design, render_csim_bundle
from tessera.models.gemm import GemmConfig

# Small enough to compile in a fraction of a second (no ap_types header).
TINY = 'extern "C" int answer(int x) { return 6 * x; }\n'


def test_build_is_cached_by_content(tmp_path):
    first = compile_cpp({"tiny.cpp": TINY}, ["tiny.cpp"], name="tiny", cache_dir=tmp_path)
    assert not first.cached and first.path.is_file()
    assert ctypes.CDLL(str(first.path)).answer(7) == 42
    mtime = first.path.stat().st_mtime_ns
    second = compile_cpp({"tiny.cpp": TINY}, ["tiny.cpp"], name="tiny", cache_dir=tmp_path)
    assert second.cached and second.path == first.path and second.key == first.key
    assert second.seconds < 0.5
    assert second.path.stat().st_mtime_ns == mtime
    changed = compile_cpp(
        {"tiny.cpp": TINY.replace("6 *", "7 *")}, ["tiny.cpp"], name="tiny", cache_dir=tmp_path
    )
    assert not changed.cached and changed.key != first.key
    assert ctypes.CDLL(str(changed.path)).answer(7) == 49
    # Nothing but finished entries (and the lock directory) is left in the cache.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".locks", first.path.parent.name, changed.path.parent.name]
    )


def test_second_build_of_a_kernel_library_is_a_cache_hit():
    cfg = GemmConfig(rows=2, cols=2)
    first = build_csim(cfg)  # compiled now, or by an earlier run: the cache is shared
    start = time.perf_counter()
    second = build_csim([cfg, cfg])  # duplicates are merged: the same single-config library
    assert time.perf_counter() - start < 1.0
    assert second.cached and second.path == first.path
    a = np.array([[1, -2], [3, 4]], np.int8)
    np.testing.assert_array_equal(csim_gemm(cfg, a, np.eye(2, dtype=np.int8)), a)


def test_compile_error_raises_csim_error_with_log(tmp_path):
    design = hls_design(GemmConfig(rows=2, cols=2))
    files, main = render_csim_bundle([design])
    header = f"{design.top}_config.h"
    files[header] = files[header].replace("static const unsigned rows = 2u;", "static rows = ;")
    with pytest.raises(CsimError, match="g\\+\\+ failed") as info:
        compile_cpp(files, [main], name="broken", cache_dir=tmp_path)
    log = info.value.log
    assert log is not None and log.is_file()
    assert str(log) in str(info.value)
    text = log.read_text()
    assert "error" in text and header in text and "command:" in text
    # The failed sources stay next to the log for inspection; nothing enters the cache proper.
    assert (log.parent / header).is_file()
    assert not list(tmp_path.glob("broken-*"))


def test_missing_compiler_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CsimError) as info:
        compile_cpp({"tiny.cpp": TINY}, ["tiny.cpp"], name="tiny", cache_dir=tmp_path)
    assert info.value.tool == "g++" and info.value.fix == "apt-get install -y g++"


def test_missing_ap_types_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_AP_TYPES", str(tmp_path / "nowhere"))
    with pytest.raises(CsimError) as info:
        compile_cpp({"tiny.cpp": TINY}, ["tiny.cpp"], name="tiny", cache_dir=tmp_path)
    assert info.value.tool == "ap_types" and "hls4ml" in info.value.fix


def test_bad_build_arguments(tmp_path):
    with pytest.raises(ValueError, match="sources must name entries"):
        compile_cpp({"tiny.cpp": TINY}, ["other.cpp"], name="tiny", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="relative path"):
        compile_cpp({"../x.cpp": TINY}, ["../x.cpp"], name="tiny", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="name must be"):
        compile_cpp({"tiny.cpp": TINY}, ["tiny.cpp"], name="a b", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        compile_cpp({"t.cpp": TINY}, ["t.cpp"], name="t", kind="static", cache_dir=tmp_path)


def test_concurrent_processes_compile_once(tmp_path):
    """Two processes asking for the same new library: one compiles, the other waits and reuses."""
    script = (
        "import sys; from tessera.hls.csim import compile_cpp; "
        f"r = compile_cpp({{'tiny.cpp': {TINY!r}}}, ['tiny.cpp'], name='race', "
        f"cache_dir={str(tmp_path)!r}); print(r.cached, r.path)"
    )
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(out[0] for out in outputs) == ["False", "True"]
    assert outputs[0][1] == outputs[1][1] and Path(outputs[0][1]).is_file()
