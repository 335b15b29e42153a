"""TemporalGemm resources from Yosys against the committed baseline for this Yosys version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.estimators.synthesis import synthesize
from tessera.models.gemm import GemmConfig
from tessera.rtl.temporal_gemm import TOP_NAME, generate_gemm
from tessera.sim.tools import tool_version

BASELINES = Path(__file__).parent / "baselines"


def _baseline() -> dict:
    version = tool_version("yosys")
    path = BASELINES / f"yosys-{version}.json"
    assert path.exists(), f"no resource baseline for Yosys {version}: add {path}"
    return json.loads(path.read_text())


def _designs(family: str) -> list[dict]:
    return [d for d in _baseline()["designs"] if d["family"] == family]


@pytest.mark.parametrize(
    "family", [pytest.param("ecp5"), pytest.param("xc7", marks=pytest.mark.slow)]
)
def test_resources_match_baseline(family, tmp_path):
    base = _baseline()
    designs = _designs(family)
    assert designs
    for design in designs:
        cfg = GemmConfig(**design["config"])
        res = synthesize(generate_gemm(cfg)["verilog"], TOP_NAME, family, cache_dir=tmp_path)
        for key in ("lut", "ff", "dsp", "bram", "carry"):
            want = design[key]
            assert abs(getattr(res, key) - want) <= base["tolerance"] * max(want, 1), (
                f"{cfg.short_name} {family} {key}: {getattr(res, key)} vs baseline {want}"
            )
