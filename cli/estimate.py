"""``tessera estimate`` and ``tessera dse``: resource / latency estimates and design-space search.

``tessera estimate ENGINE [config options] [--family F] [--json]`` prints, for one engine
configuration, the analytic (first-principles) resources, the learned surrogate's resources and
ECP5 Fmax (trained on the synthesised-design dataset), and the exact cycle count of the engine's
reference workload.

``tessera dse --workload gemm:M,N,K --device PART [--top 3] [--json] [--plot p.png]`` (or
``--workload attention:S,D[,H]``) predicts every GEMM (attention) engine configuration, keeps
those within the device budget, prints the Pareto fronts of latency vs LUT and vs DSP, and
re-synthesises the ``--top`` fastest designs to compare predicted and actual resources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "cmd_dse", "cmd_estimate"]


def _usage(message: str) -> Exception:
    from tessera.cli.main import UsageError

    return UsageError(message)


def _surrogate(csv_path: str | None) -> Any:
    from tessera.estimators.surrogate import trained_surrogate
    from tessera.estimators.sweep import DEFAULT_CSV

    path = Path(csv_path) if csv_path else DEFAULT_CSV
    if not path.is_file():
        raise _usage(
            f"dataset {path} not found: export it with `python -m tessera.estimators.sweep "
            "export` (or pass --csv)"
        )
    return trained_surrogate(path)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Run ``tessera estimate``."""
    from tessera.cli.engines import ENGINES, config_from_args
    from tessera.estimators.analytic import analytic_resources
    from tessera.estimators.cycles import engine_cycles, reference_workload

    try:
        cfg = config_from_args(ENGINES[args.engine].config_class(), args)
    except (TypeError, ValueError) as exc:
        raise _usage(str(exc)) from None
    families = ("xc7", "xcup", "ecp5") if args.family == "all" else (args.family,)
    surrogate = None if args.no_surrogate else _surrogate(args.csv)
    workload = reference_workload(args.engine, cfg)
    report: dict[str, Any] = {
        "engine": args.engine,
        "config": cfg.to_dict(),
        "name": cfg.short_name,
        "workload": workload,
        "cycles": engine_cycles(args.engine, cfg, **workload),
        "families": {},
    }
    for family in families:
        entry: dict[str, Any] = {
            "analytic": {
                k: round(v, 1) for k, v in analytic_resources(args.engine, cfg, family).items()
            }
        }
        if surrogate is not None:
            pred = surrogate.predict_design(args.engine, cfg, family)
            # the dataset's Fmax is an ECP5 place-and-route figure: shown for ecp5 only
            hidden = {"cycles"} if family == "ecp5" else {"cycles", "fmax_mhz"}
            entry["surrogate"] = {k: round(v, 1) for k, v in pred.items() if k not in hidden}
        report["families"][family] = entry
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.engine} {cfg.short_name}")
    shown = ", ".join(f"{k}={v}" for k, v in workload.items())
    print(f"cycles ({shown}): {report['cycles']}")
    print(f"{'family':<7} {'model':<10} {'LUT':>9} {'FF':>9} {'DSP':>7} {'BRAM':>7} {'Fmax':>8}")
    for family, entry in report["families"].items():
        for model, values in entry.items():
            fmax = values.get("fmax_mhz")
            fmax_text = "-" if fmax is None else f"{fmax:.0f}"
            print(
                f"{family:<7} {model:<10} {values['lut']:>9.0f} {values['ff']:>9.0f} "
                f"{values['dsp']:>7.0f} {values['bram']:>7.1f} {fmax_text:>8}"
            )
    return 0


def _shape(cfg: Any) -> str:
    """The explored parameters of a design, for the table."""
    from tessera.models.gemm import GemmConfig

    if isinstance(cfg, GemmConfig):
        bus = " half-bus" if cfg.a_stream_bytes else ""
        return f"{cfg.rows}x{cfg.cols} acc{cfg.acc_bits}{bus}"
    return f"P{cfg.parallelism} L{cfg.lanes}"


def cmd_dse(args: argparse.Namespace) -> int:
    """Run ``tessera dse``."""
    from tessera.estimators.devices import get_device
    from tessera.estimators.dse import explore, explore_m3vit, parse_workload, plot_front, verify

    try:
        workload = parse_workload(args.workload)
        device = get_device(args.device)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    if args.top < 0:
        raise _usage(f"--top must be >= 0, got {args.top}")
    if args.max_macs < 1:
        raise _usage(f"--max-macs must be >= 1, got {args.max_macs}")
    surrogate = _surrogate(args.csv)
    options = {"max_macs": args.max_macs, "max_utilization": args.max_util}
    try:
        if workload.engine == "m3vit":
            from tessera.models.m3vit import digits_tasks, load_m3vit
            from tessera.models.m3vit_quant import quantize_m3vit

            model, cfg = load_m3vit()
            train, test = digits_tasks()
            qm = quantize_m3vit(model, cfg, train.images[:256], "int8")
            points = explore_m3vit(qm, test.images[:8], device, surrogate, **options)
        else:
            points = explore(workload, device, surrogate, **options)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    feasible = [p for p in points if p.fits]
    if not feasible:
        raise _usage(
            f"no {workload.engine} design fits {device.name} at --max-util {args.max_util}; "
            "raise it or choose a larger device"
        )
    top = feasible[: args.top]
    seconds = verify(top, device.family) if top and not args.no_verify else 0.0
    plot = (
        str(plot_front(points, args.plot, f"{args.workload} on {device.name}"))
        if (args.plot)
        else None
    )
    report = {
        "workload": args.workload,
        "device": device.name,
        "family": device.family,
        "budget": device.budget(),
        "candidates": len(points),
        "fitting": len(feasible),
        "pareto_lut": [p.to_dict() for p in feasible if p.pareto_lut],
        "pareto_dsp": [p.to_dict() for p in feasible if p.pareto_dsp],
        "top": [p.to_dict() for p in top],
        "verify_seconds": round(seconds, 1),
        "plot": plot,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.workload} on {device.name} ({device.family}): {len(feasible)} of "
        f"{len(points)} designs fit"
    )
    print(
        f"{'design':<36} {'shape':<16} {'cycles':>10} {'lat us':>9} {'LUT':>8} {'DSP':>6} "
        f"{'BRAM':>6} {'front':>6} {'act LUT':>8} {'act DSP':>8}"
    )
    if feasible[0].fixed:
        others = ", ".join(f"{v:,.0f} {k.upper()}" for k, v in feasible[0].fixed.items())
        print(
            "MoE engine (same array shape) plus the shared attention, LayerNorm and GELU engines "
            f"of the fastest design (predicted): {others}"
        )
        print("per-design columns: the searched MAC array (GEMM engine); cycles per image")
    shown = [p for p in feasible if p.pareto_lut or p.pareto_dsp]
    for p in sorted(set(shown) | set(top), key=lambda q: q.latency_us):
        front = ("L" if p.pareto_lut else "") + ("D" if p.pareto_dsp else "")
        act = p.actual or {}
        print(
            f"{p.config.short_name:<36} {_shape(p.config):<16} {p.cycles:>10} {p.latency_us:>9.2f} "
            f"{p.predicted['lut']:>8.0f} {p.predicted['dsp']:>6.0f} {p.predicted['bram']:>6.1f} "
            f"{front:>6} {act.get('lut', '-'):>8} {act.get('dsp', '-'):>8}"
        )
    if plot:
        print(f"plot: {plot}")
    return 0


def add_commands(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``estimate`` and ``dse`` sub-commands to the ``tessera`` parser.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The main parser's sub-command action.
    parser_class : type
        Parser class of engine sub-parsers (one-line errors, exit status 2).
    """
    from tessera.cli.engines import ENGINES, add_config_args

    p = sub.add_parser(
        "estimate", help="predict an engine's resources (analytic and learned) and cycles"
    )
    engines = p.add_subparsers(
        dest="engine", required=True, metavar="ENGINE", parser_class=parser_class
    )
    from tessera.estimators.sweep import CONFIG_CLASSES

    for name, spec in ENGINES.items():
        if name not in CONFIG_CLASSES:
            continue  # no resource or cycle model for this engine yet
        ep = engines.add_parser(name, help=spec.summary, description=spec.summary)
        add_config_args(ep, spec.config_class())
        ep.add_argument("--family", choices=["xc7", "xcup", "ecp5", "all"], default="all")
        ep.add_argument("--csv", help="dataset the surrogate trains on (default the committed one)")
        ep.add_argument(
            "--no-surrogate", action="store_true", help="analytic model and cycles only"
        )
        ep.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "dse", help="search GEMM / attention engines for a workload within a device budget"
    )
    p.add_argument(
        "--workload",
        required=True,
        help="gemm:M,N,K, attention:S,D[,H] (seq, head dim, heads) or m3vit-tiny (whole network)",
    )
    p.add_argument("--device", required=True, help="xc7z020, xczu3eg, xck26, xczu9eg, LFE5U-85F")
    p.add_argument("--top", type=int, default=3, help="fastest fitting designs to re-synthesise")
    p.add_argument("--no-verify", action="store_true", help="skip the re-synthesis")
    p.add_argument("--max-macs", type=int, default=1024, help="largest MAC array considered")
    p.add_argument("--max-util", type=float, default=0.8, help="usable fraction of each resource")
    p.add_argument("--csv", help="dataset the surrogate trains on (default the committed one)")
    p.add_argument("--plot", help="write the Pareto fronts to this image (PNG)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dse)


if __name__ == "__main__":  # pragma: no cover - the tessera command is the entry point
    sys.exit("use the `tessera` command: tessera estimate ... / tessera dse ...")
