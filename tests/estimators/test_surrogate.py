"""The gradient-boosted surrogate on the committed synthesised-design dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tessera.estimators.analytic import analytic_resources
from tessera.estimators.surrogate import (
    TARGETS,
    Surrogate,
    config_from_row,
    design_id,
    errors,
    featurize,
    load_dataset,
    row_for,
    split_extrapolation,
    split_random,
)
from tessera.estimators.sweep import DEFAULT_CSV, design_size
from tessera.models.gelu import GeluConfig
from tessera.models.gemm import GemmConfig


@pytest.fixture(scope="module")
def rows():
    return load_dataset(DEFAULT_CSV)


@pytest.fixture(scope="module")
def fitted(rows):
    return Surrogate().fit(rows)


def test_errors_on_known_values():
    e = errors([100, 200, 0], [110, 150, 5])
    assert e["n"] == 3
    assert e["mape"] == pytest.approx((0.10 + 0.25) / 2)
    assert e["p50"] == pytest.approx(0.175)
    mean = 100.0
    assert e["r2"] == pytest.approx(1 - (100 + 2500 + 25) / ((0 + 100**2 + 100**2) + 0 * mean))


def test_features_are_engine_aware(rows):
    x, names = featurize(rows[:10])
    assert x.shape == (10, len(names)) and np.isfinite(x).all()
    assert names[:2] == ["engine", "family"]
    gelu = row_for("gelu", GeluConfig(lanes=2), "xcup")
    fx, _ = featurize([gelu])
    assert fx[0, names.index("lanes")] == 2
    assert fx[0, names.index("rows")] == -1  # GELU has no 'rows' field


def test_splits_are_disjoint_by_design(rows):
    train, test = split_random(rows, 0.25, seed=1)
    assert len(train) + len(test) == len(rows) and test
    assert not {design_id(r) for r in train} & {design_id(r) for r in test}
    train, test = split_extrapolation(rows, 0.25)
    assert not {design_id(r) for r in train} & {design_id(r) for r in test}
    for engine in {r["engine"] for r in test}:
        biggest_train = max(
            (design_size(engine, config_from_row(r)) for r in train if r["engine"] == engine),
            default=0,
        )
        smallest_test = min(
            design_size(engine, config_from_row(r)) for r in test if r["engine"] == engine
        )
        assert smallest_test >= biggest_train


def test_fits_the_training_data_closely(rows, fitted):
    preds = fitted.predict(rows)
    assert fitted.fit_seconds < 30
    for target in ("lut", "ff"):
        actual = np.array([r[target] for r in rows], dtype=float)
        e = errors(actual, preds[target])
        assert e["p75"] < 0.15, (target, e)
        assert e["r2"] > 0.9, (target, e)


def test_held_out_designs_beat_the_median_baseline(rows):
    """On a random split by design, the surrogate's LUT error is well below that of predicting
    the training median of the same engine and family."""
    train, test = split_random(rows, 0.25, seed=0)
    model = Surrogate(targets=("lut", "ff")).fit(train)
    preds = model.predict(test)
    for target in ("lut", "ff"):
        actual = np.array([r[target] for r in test], dtype=float)
        baseline = []
        for r in test:
            same = [
                t[target] for t in train if (t["engine"], t["family"]) == (r["engine"], r["family"])
            ]
            baseline.append(
                float(np.median(same)) if same else float(np.median([t[target] for t in train]))
            )
        ours = errors(actual, preds[target])["mape"]
        naive = errors(actual, baseline)["mape"]
        assert ours < 0.35, (target, ours)
        assert ours < naive, (target, ours, naive)


def test_predictions_follow_size_beyond_the_training_range(fitted):
    small = fitted.predict_design("gemm", GemmConfig(rows=2, cols=2), "xc7")
    big = fitted.predict_design("gemm", GemmConfig(rows=32, cols=32), "xc7")
    # Trees alone would saturate at the largest training design; the analytic baseline carries on.
    assert big["lut"] > 4 * small["lut"]
    assert big["ff"] > 4 * small["ff"]
    base = analytic_resources("gemm", GemmConfig(rows=32, cols=32), "xc7")
    assert math.log(big["lut"] / base["lut"]) == pytest.approx(0, abs=math.log(10))


def test_save_and_load_give_the_same_predictions(rows, fitted, tmp_path):
    path = fitted.save(tmp_path / "s.joblib")
    again = Surrogate.load(path)
    a, b = fitted.predict(rows[:8]), again.predict(rows[:8])
    assert set(a) == set(b) and set(a) <= set(TARGETS)
    for t in a:
        np.testing.assert_allclose(a[t], b[t])


def test_bad_input():
    with pytest.raises(ValueError, match="unknown targets"):
        Surrogate(targets=("power",))
    with pytest.raises(ValueError, match="not fitted"):
        Surrogate().predict([row_for("gelu", GeluConfig(), "xc7")])
    with pytest.raises(ValueError, match="unknown family"):
        row_for("gelu", GeluConfig(), "ice40")
    with pytest.raises(FileNotFoundError, match="sweep"):
        load_dataset("/nonexistent/designs.csv")


def test_trained_surrogate_is_cached(rows, tmp_path):
    from tessera.estimators.surrogate import trained_surrogate

    cache = tmp_path / "model.joblib"
    first = trained_surrogate(DEFAULT_CSV, cache)
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    second = trained_surrogate(DEFAULT_CSV, cache)
    assert cache.stat().st_mtime_ns == stamp  # read back, not refitted
    np.testing.assert_allclose(first.predict(rows[:5])["lut"], second.predict(rows[:5])["lut"])
    # A file of another layout is refitted, not trusted.
    cache.write_bytes(b"not a model")
    third = trained_surrogate(DEFAULT_CSV, cache)
    np.testing.assert_allclose(first.predict(rows[:5])["lut"], third.predict(rows[:5])["lut"])


def test_cross_validation_keeps_trees_only_where_they_help():
    """Trees on a residual that depends on a feature beat the analytic model; on pure noise the
    analytic model alone wins."""
    import functools

    from sklearn.ensemble import HistGradientBoostingRegressor

    from tessera.estimators.surrogate import _trees_help

    rng = np.random.default_rng(0)
    features = np.c_[np.zeros(120), np.zeros(120), rng.uniform(0, 4, 120)]
    groups = [f"d{i // 2}" for i in range(120)]  # two rows (families) per design
    make = functools.partial(
        HistGradientBoostingRegressor, max_iter=50, categorical_features=[0, 1], random_state=0
    )
    assert _trees_help(make, features, 0.3 * np.floor(features[:, 2]), groups)
    assert not _trees_help(make, features, rng.normal(0, 0.01, 120), groups)
