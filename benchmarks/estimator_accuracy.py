"""Accuracy of tessera's resource / timing estimators on the synthesised-design dataset.

    python benchmarks/estimator_accuracy.py [--csv estimators/data/designs.csv] [--json out.json]
                                            [--defaults]

For each target (LUT, FF, DSP, BRAM, Fmax, cycles) and each split (random by design; extrapolation:
train on the smaller 80 % of each engine's designs, test on the largest 20 %), prints the mean
absolute percentage error, the 50th / 75th / 95th percentiles of |relative error| and R² of the
gradient-boosted surrogate, of the raw first-principles analytic model, and of the analytic model
scaled per engine / family / resource on the training split; then the published figures of
wa-hls4ml and rule4ml, and the prediction time per design against the synthesis time per design
recorded in the dataset. Works on whatever size the dataset has. ``--defaults`` adds a third test
set: every engine's default configuration (trained on the whole dataset).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tessera.estimators.analytic import analytic_resources, calibrate
from tessera.estimators.cycles import engine_cycles, reference_workload
from tessera.estimators.surrogate import (
    TARGETS,
    Surrogate,
    config_from_row,
    errors,
    load_dataset,
    split_extrapolation,
    split_random,
)
from tessera.estimators.sweep import DEFAULT_CSV

#: Published accuracy of learned HLS estimators (see /shared/PAPERS.md), for context only: they
#: are measured on other designs (hls4ml dense / conv layers) and other tools.
PUBLISHED = {
    "wa-hls4ml (GNN / transformer, synthetic test set)": "a few % |error| at p75 (LUT, FF, DSP, "
    "BRAM, latency); worse on real exemplar models",
    "rule4ml (MLP)": "R² 0.8-0.98, sMAPE 10-30 % (resources and latency)",
}


def _analytic(rows: list[dict[str, Any]], target: str, scales: dict | None) -> np.ndarray:
    out = []
    for r in rows:
        cfg = config_from_row(r)
        if target == "cycles":
            out.append(engine_cycles(r["engine"], cfg, **reference_workload(r["engine"], cfg)))
        else:
            out.append(analytic_resources(r["engine"], cfg, r["family"], scales)[target])
    return np.array(out, dtype=float)


def evaluate(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Accuracy of every estimator on both splits.

    Parameters
    ----------
    rows : list of dict
        Dataset rows (:func:`tessera.estimators.surrogate.load_dataset`).
    seed : int, optional
        Seed of the random split and of the boosting.

    Returns
    -------
    dict
        ``splits`` -> split name -> ``{"train": n, "test": n, "targets": {target: {estimator:
        errors}}}``, ``timing`` (seconds per design), ``published`` and ``rows``.
    """
    result: dict[str, Any] = {"rows": len(rows), "splits": {}, "published": PUBLISHED}
    predict_seconds: list[float] = []
    analytic_seconds: list[float] = []
    for split_name, (train, test) in (
        ("random", split_random(rows, 0.2, seed)),
        ("extrapolation", split_extrapolation(rows, 0.2)),
    ):
        entry: dict[str, Any] = {"train": len(train), "test": len(test), "targets": {}}
        result["splits"][split_name] = entry
        if len(train) < 5 or not test:
            continue
        model = Surrogate(seed=seed).fit(train)
        start = time.perf_counter()
        predictions = model.predict(test)
        predict_seconds.append((time.perf_counter() - start) / len(test))
        scales = calibrate((r["engine"], config_from_row(r), r["family"], r) for r in train)
        for target in TARGETS:
            have = [i for i, r in enumerate(test) if r.get(target) is not None]
            if not have:
                continue
            actual = np.array([float(test[i][target]) for i in have])
            per: dict[str, Any] = {}
            if target in predictions:
                per["surrogate"] = errors(actual, predictions[target][have])
            if target != "fmax_mhz":
                subset = [test[i] for i in have]
                start = time.perf_counter()
                raw = _analytic(subset, target, None)
                analytic_seconds.append((time.perf_counter() - start) / len(subset))
                per["analytic"] = errors(actual, raw)
                if target != "cycles":
                    per["analytic_calibrated"] = errors(actual, _analytic(subset, target, scales))
            entry["targets"][target] = per
    synth = [float(r["synth_seconds"]) for r in rows if r.get("synth_seconds") is not None]
    result["timing"] = {
        "surrogate_predict_s_per_design": float(np.mean(predict_seconds))
        if predict_seconds
        else None,
        "analytic_s_per_design": float(np.mean(analytic_seconds)) if analytic_seconds else None,
        "synthesis_s_per_design_mean": float(np.mean(synth)) if synth else None,
        "synthesis_s_per_design_median": float(np.median(synth)) if synth else None,
    }
    return result


def evaluate_defaults(rows: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Accuracy on each engine's default configuration (the shipped designs, mostly outside the
    sweep grid), trained on the whole dataset; the defaults are synthesised (or read from the
    synthesis cache) for ``xc7`` and ``xcup``.

    Returns
    -------
    dict
        ``{"train": n, "test": n, "targets": {target: {estimator: errors}}}``.
    """
    from tessera.cli.engines import ENGINES
    from tessera.estimators.surrogate import row_for
    from tessera.estimators.sweep import CONFIG_CLASSES
    from tessera.estimators.synthesis import synthesize

    test = []
    for engine in CONFIG_CLASSES:
        cfg = CONFIG_CLASSES[engine]()
        generated = ENGINES[engine].generator()(cfg, None)
        for family in ("xc7", "xcup"):
            res = synthesize(generated["verilog"], generated["top"], family)
            row = row_for(engine, cfg, family)
            row.update(lut=res.lut, ff=res.ff, dsp=res.dsp, bram=res.bram)
            test.append(row)
    model = Surrogate(seed=seed).fit(rows)
    predictions = model.predict(test)
    scales = calibrate((r["engine"], config_from_row(r), r["family"], r) for r in rows)
    targets: dict[str, Any] = {}
    for target in ("lut", "ff", "dsp", "bram"):
        actual = np.array([float(r[target]) for r in test])
        targets[target] = {
            "surrogate": errors(actual, predictions[target]),
            "analytic": errors(actual, _analytic(test, target, None)),
            "analytic_calibrated": errors(actual, _analytic(test, target, scales)),
        }
    return {"train": len(rows), "test": len(test), "targets": targets}


def _pct(value: float) -> str:
    return "   n/a" if value is None or math.isnan(value) else f"{100 * value:5.1f}%"


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a fixed-width text table."""
    lines = [f"designs CSV rows: {result['rows']}"]
    header = (
        f"{'split':<13} {'target':<9} {'estimator':<20} {'n':>4} {'MAPE':>7} {'p50':>7} "
        f"{'p75':>7} {'p95':>7} {'R2':>7}"
    )
    lines += [header, "-" * len(header)]
    for split, entry in result["splits"].items():
        if not entry["targets"]:
            lines.append(
                f"{split:<13} (train {entry['train']}, test {entry['test']}: too few rows)"
            )
        for target, per in entry["targets"].items():
            for name, e in per.items():
                r2 = "    n/a" if math.isnan(e["r2"]) else f"{e['r2']:7.3f}"
                lines.append(
                    f"{split:<13} {target:<9} {name:<20} {e['n']:>4} {_pct(e['mape']):>7} "
                    f"{_pct(e['p50']):>7} {_pct(e['p75']):>7} {_pct(e['p95']):>7} {r2}"
                )
    lines.append("")
    lines.append("published (other designs and tools, for context):")
    lines += [f"  {k}: {v}" for k, v in result["published"].items()]
    t = result["timing"]
    lines.append("")
    if t["surrogate_predict_s_per_design"] is not None:
        lines.append(
            f"prediction: surrogate {1e3 * t['surrogate_predict_s_per_design']:.2f} ms/design, "
            f"analytic {1e3 * (t['analytic_s_per_design'] or 0):.2f} ms/design"
        )
    if t["synthesis_s_per_design_mean"] is not None:
        lines.append(
            f"synthesis (dataset): mean {t['synthesis_s_per_design_mean']:.1f} s, median "
            f"{t['synthesis_s_per_design_median']:.1f} s per design and family"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(DEFAULT_CSV), help="designs dataset")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="also test on every engine's default configuration (synthesised if not cached)",
    )
    args = parser.parse_args(argv)
    if not Path(args.csv).is_file():
        parser.error(f"{args.csv} not found: run the sweep and export it first")
    rows = load_dataset(args.csv)
    result = evaluate(rows, args.seed)
    if args.defaults:
        result["splits"]["defaults"] = evaluate_defaults(rows, args.seed)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
