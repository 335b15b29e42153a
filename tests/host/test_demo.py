"""The end-to-end demo (``tessera demo``) on a slice of the test split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tessera.estimators.devices import get_device
from tessera.host.demo import BOARDS, DemoOptions, run_demo
from tessera.host.device import LINKS


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    result = run_demo(
        DemoOptions(images=32, presets=("int8", "w4a8"), out=str(out), progress=False)
    )
    return out, result


def test_demo_passes_and_writes_the_report(summary):
    out, s = summary
    assert s["passed"] is True
    for name in ("accuracy", "pareto", "timeline", "experts"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    md = (out / "summary.md").read_text()
    assert "| int8 |" in md and "bit-exact" in md and "MISMATCH" not in md
    assert not list(out.parent.glob(".report.*"))  # no scratch directory left behind


def test_demo_figures_are_consistent(summary):
    _, s = summary
    assert set(s["accuracy"]) == {"float", "int8", "w4a8"}
    assert all(r["passed"] for r in s["rtl"].values())
    moe = next(r for k, r in s["rtl"].items() if k.startswith("MoE"))
    assert moe["cycles"] == moe["model_cycles"]
    # Expert activation: every token goes to top_k experts in every MoE block.
    for counts in s["expert_tokens"].values():
        assert (np.array(counts).sum(axis=1) == 32 * 17 * 2).all()
    # The chosen design fits the board with the shared engines, and synthesis agrees with the
    # surrogate on the array's DSPs within 20 %.
    d = s["design"]
    budget = get_device(BOARDS["pynq-z2"][0]).budget()
    for r, limit in budget.items():
        assert d["predicted"][r] + d["fixed"][r] <= 0.8 * limit
    assert d["actual"]["dsp"] == pytest.approx(d["predicted"]["dsp"], rel=0.2)
    run = s["run"]
    assert run["array_bit_exact"] and run["images"] >= 2 * 32
    for t, r in run["tasks"].items():
        assert abs(r["accuracy"] - s["accuracy"]["int8"][int(t)]) <= 1 / 32
        assert r["agreement_with_int8"] >= 0.9
    placed = {dev for p in run["plans"] for dev in p["placement"].values()}
    assert "fpga:emu" in placed


def test_failed_demo_keeps_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").write_text("previous")

    def broken(*args, **kwargs):
        raise RuntimeError("synthetic failure in the DSE step")

    monkeypatch.setattr("tessera.estimators.dse.explore_m3vit", broken)
    opts = DemoOptions(images=2, presets=("int8",), verify_rtl=False, out=str(out), progress=False)
    with pytest.raises(RuntimeError, match="synthetic"):
        run_demo(opts)
    assert (out / "summary.md").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("board", "zedboard", "unknown board"),
        ("presets", ("int3",), "unknown preset"),
        ("images", 0, "images must be"),
        ("devices", ("cpu", "fpga:emu"), "FPGA is added"),
    ],
)
def test_bad_options(field, value, message):
    with pytest.raises(ValueError, match=message):
        DemoOptions(**{field: value})


def test_boards_name_real_parts():
    for part, link in BOARDS.values():
        assert get_device(part).name == part
        assert link in LINKS
