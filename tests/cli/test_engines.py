"""Engine registry: options derived from config fields build the same configs."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tessera.cli.engines import ENGINES, add_config_args, config_from_args


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_defaults_round_trip_and_every_field_has_an_option(name):
    cls = ENGINES[name].config_class()
    parser = argparse.ArgumentParser()
    add_config_args(parser, cls)
    assert config_from_args(cls, parser.parse_args([])) == cls()
    options = {a.dest for a in parser._actions}
    assert {f"cfg_{f.name}" for f in dataclasses.fields(cls)} <= options


def test_options_reach_the_config_and_its_validation():
    cls = ENGINES["gemm"].config_class()
    parser = argparse.ArgumentParser()
    add_config_args(parser, cls)
    cfg = config_from_args(cls, parser.parse_args(["--rows", "0x8", "--rounding", "TRN"]))
    assert (cfg.rows, cfg.cols, str(cfg.rounding)) == (8, 4, "TRN")
    with pytest.raises(ValueError, match="cols"):
        config_from_args(cls, parser.parse_args(["--cols", "65"]))
