"""Learned resource / timing surrogate: gradient-boosted trees on the synthesised-design dataset.

One scikit-learn ``HistGradientBoostingRegressor`` per target (LUT, FF, DSP, BRAM, Fmax, cycles),
fitted on ``log1p`` of the target so that relative errors count the same on small and large
designs, and relative to the first-principles estimate (:mod:`tessera.estimators.analytic`, scaled
per engine and family on the training rows; the cycle model for cycles): the trees learn
``log1p(actual) - log1p(baseline)``, so predictions
follow the analytic trend beyond the largest training design instead of saturating there. Where
3-fold cross-validation on the training rows finds that the trees do not improve on the calibrated
analytic count (block RAM, whose count is exact for most designs; DSP blocks), the analytic count
is the prediction.
Features are engine-aware: the engine and family (categorical), every config field (-1 where an
engine lacks it), the analytic counts and a few derived sizes (MACs, memory bits).

Training on a few hundred rows takes well under a second. Models are saved with ``joblib``.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tessera.estimators.analytic import RESOURCES, analytic_resources, calibrate, inventory
from tessera.estimators.sweep import CONFIG_CLASSES, DEFAULT_CSV, config_columns, design_size
from tessera.models.rounding import Overflow, Rounding

__all__ = [
    "FAMILY_CODES",
    "TARGETS",
    "Surrogate",
    "config_from_row",
    "design_id",
    "featurize",
    "load_dataset",
    "row_for",
    "split_extrapolation",
    "split_random",
]

#: Targets the surrogate learns; ``fmax_mhz`` exists only on ``ecp5`` (place-and-route) rows.
TARGETS: tuple[str, ...] = ("lut", "ff", "dsp", "bram", "fmax_mhz", "cycles")

ENGINE_CODES: dict[str, int] = {name: i for i, name in enumerate(CONFIG_CLASSES)}
FAMILY_CODES: dict[str, int] = {"xc7": 0, "xcup": 1, "ecp5": 2}
# Enum fields are coded by their member order, fixed by the enum classes themselves.
_ENUMS: dict[str, dict[str, int]] = {
    "rounding": {m.value: i for i, m in enumerate(Rounding)},
    "overflow": {m.value: i for i, m in enumerate(Overflow)},
}
# Version of the model layout in cached files: bump when features or targets change meaning.
_FORMAT = 6
_DEFAULT_MODEL = (
    Path(__file__).resolve().parent.parent / "build" / "estimators" / "surrogate.joblib"
)


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def load_dataset(path: str | os.PathLike[str] = DEFAULT_CSV) -> list[dict[str, Any]]:
    """Rows of the designs CSV as dicts (numbers parsed, empty cells ``None``).

    Parameters
    ----------
    path : path, optional
        CSV written by :func:`tessera.estimators.sweep.export_csv`.

    Returns
    -------
    list of dict

    Raises
    ------
    FileNotFoundError
        If the CSV does not exist (run the sweep and export it first).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run `python -m tessera.estimators.sweep run` and `... export`"
        )
    with path.open(newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def config_from_row(row: Mapping[str, Any]) -> Any:
    """The engine config object of a dataset row."""
    cls = CONFIG_CLASSES[row["engine"]]
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        value = row.get(f.name)
        if value is not None:
            values[f.name] = value
    return cls(**values)


def row_for(engine: str, cfg: Any, family: str) -> dict[str, Any]:
    """A feature row for a design that has not been synthesised (no targets)."""
    if engine not in CONFIG_CLASSES:
        raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(CONFIG_CLASSES)}")
    if family not in FAMILY_CODES:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILY_CODES)}")
    from tessera.estimators.cycles import engine_cycles, reference_workload

    row = {"engine": engine, "family": family, **cfg.to_dict()}
    row["cycles"] = engine_cycles(engine, cfg, **reference_workload(engine, cfg))
    return row


def design_id(row: Mapping[str, Any]) -> str:
    """Engine and config digest of a row (a design's rows for all families share it)."""
    return f"{row['engine']}:{config_from_row(row).digest}"


def featurize(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """Feature matrix of dataset rows.

    Parameters
    ----------
    rows : sequence of dict
        Dataset rows (or :func:`row_for` rows).

    Returns
    -------
    (numpy.ndarray, list of str)
        ``(len(rows), n_features)`` float matrix (-1 for fields an engine lacks) and the
        feature names; the first two columns are the categorical engine and family codes.
    """
    fields = config_columns()
    names = ["engine", "family", *fields]
    names += [f"analytic_{r}" for r in RESOURCES]
    names += ["log_size", "multipliers", "mult_bits", "memory_bits", "reg_bits", "log_cycles"]
    matrix = np.zeros((len(rows), len(names)))
    for i, row in enumerate(rows):
        engine, family = row["engine"], row["family"]
        cfg = config_from_row(row)
        values: list[float] = [ENGINE_CODES[engine], FAMILY_CODES[family]]
        for name in fields:
            value = row.get(name)
            if isinstance(value, str):
                value = _ENUMS[name][value]
            # -1 marks a field the engine lacks (all-missing columns break histogram binning).
            values.append(-1.0 if value is None else float(value))
        model = analytic_resources(engine, cfg, family)
        values += [math.log1p(model[r]) for r in RESOURCES]
        inv = inventory(engine, cfg)
        values += [
            math.log(design_size(engine, cfg)),
            float(len(inv.multipliers)),
            float(sum(a * b for a, b in inv.multipliers)),
            math.log1p(sum(d * w for d, w in inv.memories)),
            math.log1p(inv.reg_bits),
            math.log1p(float(row["cycles"])) if row.get("cycles") is not None else -1.0,
        ]
        matrix[i] = values
    return matrix, names


def split_random(
    rows: Sequence[Mapping[str, Any]], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """Random split by design (all families of a design fall on the same side).

    Returns
    -------
    (train, test) : lists of rows
    """
    ids = sorted({design_id(r) for r in rows})
    rng = random.Random(seed)
    rng.shuffle(ids)
    test_ids = set(ids[: max(1, round(test_fraction * len(ids)))])
    train = [r for r in rows if design_id(r) not in test_ids]
    test = [r for r in rows if design_id(r) in test_ids]
    return train, test


def split_extrapolation(
    rows: Sequence[Mapping[str, Any]], test_fraction: float = 0.2
) -> tuple[list[Any], list[Any]]:
    """Hold out, per engine, the largest designs (by :func:`design_size`): train small, test big.

    Returns
    -------
    (train, test) : lists of rows
    """
    by_engine: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        size = design_size(r["engine"], config_from_row(r))
        by_engine.setdefault(r["engine"], []).append((size, design_id(r)))
    test_ids: set[str] = set()
    for items in by_engine.values():
        unique = sorted(set(items))
        count = round(test_fraction * len(unique))
        test_ids.update(i for _, i in unique[len(unique) - count :] if count)
    train = [r for r in rows if design_id(r) not in test_ids]
    test = [r for r in rows if design_id(r) in test_ids]
    return train, test


_FEATURE_NAMES: list[str] = []


def _baseline(
    features: np.ndarray, target: str, scales: Mapping[tuple[str, str, str], float] | None = None
) -> np.ndarray:
    """``log1p`` of the first-principles estimate of a target (0 where there is none), scaled
    per engine and family by ``scales`` (:func:`tessera.estimators.analytic.calibrate`).

    The trees learn the residual ``log1p(actual) - baseline``: trees cannot extrapolate past the
    largest training design, but the analytic counts do, so the residual carries the fit along
    the analytic trend to larger designs.
    """
    if not _FEATURE_NAMES:
        _FEATURE_NAMES.extend(featurize([])[1])
    column = {"cycles": "log_cycles"}.get(target, f"analytic_{target}")
    if column not in _FEATURE_NAMES:
        return np.zeros(len(features))
    base = np.maximum(features[:, _FEATURE_NAMES.index(column)], 0.0)
    if not scales or target not in RESOURCES:
        return base
    engines = {code: name for name, code in ENGINE_CODES.items()}
    families = {code: name for name, code in FAMILY_CODES.items()}
    factor = np.array(
        [scales.get((engines[int(e)], families[int(f)], target), 1.0) for e, f in features[:, :2]]
    )
    return np.log1p(np.expm1(base) * factor)


class _NoResidual:
    """A target predicted by the calibrated analytic model alone (zero residual)."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.zeros(len(features))


def _trees_help(make: Any, features: np.ndarray, y: np.ndarray, groups: Sequence[str]) -> bool:
    """Whether trees on the residual beat the calibrated analytic model alone, by 3-fold
    cross-validation over designs on the training rows (mean |log error|).

    For block RAM the analytic count is exact on most designs, and trees fitted to the few that
    differ only add noise; cross-validation finds such targets without looking at test rows.
    """
    ids = sorted(set(groups))
    if len(ids) < 9:
        return True
    order = random.Random(0).sample(ids, len(ids))
    fold_of = {d: i % 3 for i, d in enumerate(order)}
    fold = np.array([fold_of[g] for g in groups])
    tree_error = base_error = 0.0
    for k in range(3):
        train, test = fold != k, fold == k
        residual = make().fit(features[train], y[train]).predict(features[test])
        tree_error += float(np.abs(y[test] - residual).sum())
        base_error += float(np.abs(y[test]).sum())
    return tree_error < base_error


class Surrogate:
    """Gradient-boosted trees per target on ``log1p`` targets, relative to the analytic model.

    Parameters
    ----------
    targets : sequence of str, optional
        Targets to learn, among :data:`TARGETS`.
    seed : int, optional
        Seed of the boosting.

    Attributes
    ----------
    models : dict
        Fitted regressor per target (targets with fewer than 5 training rows are skipped).
    scales : dict
        Per engine / family / resource scale of the analytic baseline, fitted on the training
        rows (:func:`tessera.estimators.analytic.calibrate`).
    train_rows : dict
        Training rows used per target.
    fit_seconds : float
        Wall time of the last :meth:`fit`.
    """

    def __init__(self, targets: Sequence[str] = TARGETS, seed: int = 0) -> None:
        bad = [t for t in targets if t not in TARGETS]
        if bad:
            raise ValueError(f"unknown targets {bad}; allowed: {', '.join(TARGETS)}")
        self.targets = tuple(targets)
        self.seed = seed
        self.models: dict[str, Any] = {}
        self.scales: dict[tuple[str, str, str], float] = {}
        self.train_rows: dict[str, int] = {}
        self.fit_seconds = 0.0

    def fit(self, rows: Sequence[Mapping[str, Any]]) -> Surrogate:
        """Fit every target on the rows that have it.

        Parameters
        ----------
        rows : sequence of dict
            Dataset rows.

        Returns
        -------
        Surrogate
            ``self``.
        """
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        start = time.perf_counter()
        features, _ = featurize(rows)
        self.scales = calibrate(
            (r["engine"], config_from_row(r), r["family"], r) for r in rows if r.get("lut")
        )
        with threadpool_limits(1):  # OpenMP threads only add overhead at this data size
            self._fit(features, rows, HistGradientBoostingRegressor)
        self.fit_seconds = time.perf_counter() - start
        return self

    def _fit(self, features: np.ndarray, rows: Sequence[Mapping[str, Any]], regressor: Any) -> None:
        for target in self.targets:
            mask = np.array([r.get(target) is not None for r in rows])
            if mask.sum() < 5:
                continue
            actual = np.array([float(r[target]) for r in rows if r.get(target) is not None])
            y = np.log1p(actual) - _baseline(features[mask], target, self.scales)
            n = int(mask.sum())
            make = functools.partial(
                regressor,
                max_iter=300,
                learning_rate=0.08,
                max_leaf_nodes=15,
                min_samples_leaf=max(2, min(20, n // 25)),
                l2_regularization=1e-3,
                categorical_features=[0, 1],
                random_state=self.seed,
            )

            groups = [design_id(r) for r in rows if r.get(target) is not None]
            if target in RESOURCES and not _trees_help(make, features[mask], y, groups):
                model: Any = _NoResidual()  # the calibrated analytic count alone
            else:
                model = make().fit(features[mask], y)
            self.models[target] = model
            self.train_rows[target] = n

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Predicted targets of rows, by target (counts are clipped at 0).

        Parameters
        ----------
        rows : sequence of dict
            Dataset rows or :func:`row_for` rows.

        Returns
        -------
        dict of str to numpy.ndarray
        """
        if not self.models:
            raise ValueError("the surrogate is not fitted: call fit() or Surrogate.load()")
        from threadpoolctl import threadpool_limits

        features, _ = featurize(rows)
        with threadpool_limits(1):
            return {
                t: np.maximum(
                    np.expm1(model.predict(features) + _baseline(features, t, self.scales)), 0.0
                )
                for t, model in self.models.items()
            }

    def predict_design(self, engine: str, cfg: Any, family: str) -> dict[str, float]:
        """Predicted targets of one design on one family (``fmax_mhz`` refers to ECP5)."""
        row = row_for(engine, cfg, family)
        preds = self.predict([row])
        return {t: float(v[0]) for t, v in preds.items()}

    def save(self, path: str | os.PathLike[str] = _DEFAULT_MODEL) -> Path:
        """Write the fitted models with joblib; returns the path."""
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(
            {
                "format": _FORMAT,
                "targets": self.targets,
                "seed": self.seed,
                "models": self.models,
                "scales": self.scales,
                "train_rows": self.train_rows,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str] = _DEFAULT_MODEL) -> Surrogate:
        """Read a model written by :meth:`save`."""
        import joblib

        data = joblib.load(Path(path))
        if data.get("format") != _FORMAT:
            raise ValueError(f"{path} holds a model of another layout; fit and save it again")
        model = cls(data["targets"], data["seed"])
        model.models = data["models"]
        model.scales = data["scales"]
        model.train_rows = data["train_rows"]
        return model


def trained_surrogate(
    csv_path: str | os.PathLike[str] = DEFAULT_CSV, cache: str | os.PathLike[str] | None = None
) -> Surrogate:
    """A surrogate fitted on the whole dataset, reused from ``cache`` while the CSV is unchanged.

    Parameters
    ----------
    csv_path : path, optional
        Dataset.
    cache : path, optional
        joblib file; default ``build/estimators/surrogate-v<format>-<hash>.joblib``, the hash
        covering the CSV and the feature code.

    Returns
    -------
    Surrogate
    """
    import hashlib

    csv_path = Path(csv_path)
    # The features come from the analytic model: a change to either module invalidates the cache.
    from tessera.estimators import analytic

    material = csv_path.read_bytes()
    for module_path in (Path(analytic.__file__), Path(__file__)):
        material += module_path.read_bytes()
    digest = hashlib.sha256(material).hexdigest()[:12]
    name = f"surrogate-v{_FORMAT}-{digest}.joblib"
    path = Path(cache) if cache else _DEFAULT_MODEL.with_name(name)
    if path.is_file():
        try:
            return Surrogate.load(path)
        except Exception:  # an unreadable or stale pickle: refit
            pass
    model = Surrogate().fit(load_dataset(csv_path))
    model.save(path)
    return model


def errors(actual: Iterable[float], predicted: Iterable[float]) -> dict[str, float]:
    """Accuracy of predictions: MAPE and percentiles of |relative error| (rows with actual > 0),
    and R² on the raw values.

    Returns
    -------
    dict
        ``n``, ``mape``, ``p50``, ``p75``, ``p95`` (fractions) and ``r2``.
    """
    a = np.asarray(list(actual), dtype=float)
    p = np.asarray(list(predicted), dtype=float)
    positive = a > 0
    rel = np.abs(p[positive] - a[positive]) / a[positive]
    ss_res = float(np.sum((a - p) ** 2))
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    return {
        "n": len(a),
        "mape": float(rel.mean()) if rel.size else float("nan"),
        "p50": float(np.percentile(rel, 50)) if rel.size else float("nan"),
        "p75": float(np.percentile(rel, 75)) if rel.size else float("nan"),
        "p95": float(np.percentile(rel, 95)) if rel.size else float("nan"),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }
