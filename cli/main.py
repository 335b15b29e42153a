"""``tessera`` command line: generate, verify, synthesize, estimate and run accelerator engines.

Errors in the user's input print one ``tessera: error: ...`` line and exit with status 2; nothing is
left half-written (outputs are assembled in a temporary directory and moved into place).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

FAMILIES = ("xc7", "xcup", "ecp5", "ice40")


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def _progress(message: str) -> None:
    print(f"[tessera] {message}", file=sys.stderr, flush=True)


def _config(engine: str, args: argparse.Namespace) -> Any:
    from tessera.cli.engines import ENGINES, config_from_args

    try:
        return config_from_args(ENGINES[engine].config_class(), args)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, r in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if j else c.ljust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))


# ---- generate ---------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from tessera.cli.engines import ENGINES

    cfg = _config(args.engine, args)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"output directory {out} is not empty; pass --force to overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        if args.hls:
            from tessera.hls.generate import generate_hls

            try:
                generate_hls(cfg, tmp, part=args.part, clock_mhz=args.clock_mhz)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        else:
            ENGINES[args.engine].generator()(cfg, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        os.mkdir(tmp)  # let TemporaryDirectory clean up an empty directory
    files = sorted(str(p) for p in out.iterdir())
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "name": cfg.short_name, "files": files}))
    else:
        print(f"{cfg.short_name}: wrote {', '.join(files)}")
    return 0


# ---- simulate ---------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from tessera.cli.engines import ENGINES

    spec = ENGINES[args.engine]
    cfg = _config(args.engine, args)
    try:
        cases = spec.make_cases(cfg, args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _progress(f"simulating {args.engine} {cfg.short_name} on {args.sim} (builds once per config)")
    t0 = time.perf_counter()
    results, extra = spec.simulate(cfg, cases, args)
    seconds = time.perf_counter() - t0
    passed = all(r.passed for r in results)
    if args.json:
        report = {
            "engine": args.engine,
            "config": cfg.to_dict(),
            "passed": passed,
            "results": [r.to_dict() for r in results],
            **extra,
            "wall_seconds": round(seconds, 3),
        }
        print(json.dumps(report))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'} {r.case}: {r.message}, {r.cycles} cycles")
            if getattr(r, "utilization", None) is not None:
                print(
                    f"  ideal {r.ideal_cycles:.1f}  utilization {100 * r.utilization:.2f} %"
                    f"  (model: {extra['model_cycles']} cycles)"
                )
            elif "model_cycles" in extra:
                print(f"  model without stalls: {extra['model_cycles']} cycles")
            if r.waves:
                print(f"waveform: {r.waves}")
    return 0 if passed else 1


# ---- csim -------------------------------------------------------------------------------------


def cmd_csim(args: argparse.Namespace) -> int:
    from tessera.cli.engines import ENGINES

    spec = ENGINES[args.engine]
    if spec.csim is None:
        raise UsageError(
            f"{args.engine} has no HLS kernel yet; engines with one: "
            + ", ".join(n for n, e in ENGINES.items() if e.csim is not None)
        )
    cfg = _config(args.engine, args)
    try:
        (case,) = spec.make_cases(cfg, args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _progress(f"C-simulating {args.engine} {cfg.short_name} (g++, cached by content)")
    t0 = time.perf_counter()
    got, expected = spec.csim(cfg, case)
    seconds = time.perf_counter() - t0
    got, expected = np.asarray(got, dtype=np.int64), np.asarray(expected, dtype=np.int64)
    differ = np.flatnonzero(got.ravel() != expected.ravel()) if got.shape == expected.shape else []
    passed = got.shape == expected.shape and len(differ) == 0
    report: dict[str, Any] = {
        "engine": args.engine,
        "config": cfg.to_dict(),
        "case": case.label,
        "passed": passed,
        "elements": int(expected.size),
        "mismatches": len(differ) if got.shape == expected.shape else None,
        "max_abs_error": int(np.abs(got - expected).max()) if got.shape == expected.shape else None,
        "seconds": round(seconds, 3),
    }
    if args.json:
        print(json.dumps(report))
    elif got.shape != expected.shape:
        print(f"FAIL {case.label}: output shape {got.shape}, golden {expected.shape}")
    else:
        first = ""
        if len(differ):
            index = np.unravel_index(differ[0], expected.shape)
            first = (
                f", first at {tuple(int(i) for i in index)}: expected {expected[index]}, "
                f"got {got[index]}"
            )
        print(
            f"{'PASS' if passed else 'FAIL'} {case.label}: {expected.size} elements, "
            f"{report['mismatches']} differ from the golden model{first} ({seconds:.2f} s)"
        )
    return 0 if passed else 1


# ---- synth ------------------------------------------------------------------------------------


def _synth(engine: str, cfg: Any, family: str) -> Any:
    from tessera.cli.engines import ENGINES
    from tessera.estimators.synthesis import synthesize

    generated = ENGINES[engine].generator()(cfg, None)
    return synthesize(generated["verilog"], generated["top"], family)


def cmd_synth(args: argparse.Namespace) -> int:
    cfg = _config(args.engine, args)
    _progress(f"synthesizing {cfg.short_name} for {args.family} with Yosys (cached by content)")
    res = _synth(args.engine, cfg, args.family)
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), **res.to_dict()}))
    else:
        _print_table(
            [
                [
                    cfg.short_name,
                    res.family,
                    res.lut,
                    res.ff,
                    res.dsp,
                    res.bram,
                    res.carry,
                    f"{res.seconds:.1f}{' (cached)' if res.cached else ''}",
                ]
            ],
            ["design", "family", "LUT", "FF", "DSP", "BRAM", "carry", "seconds"],
        )
    return 0


# ---- demo -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    if args.target == "gemm":
        return _gemm_demo(args)
    from tessera.host.demo import DemoOptions, run_demo

    try:
        options = DemoOptions(
            board=args.board,
            devices=tuple(d for d in args.devices.split(",") if d) if args.devices else None,
            presets=tuple(p for p in args.presets.split(",") if p),
            images=args.images,
            batch=args.batch,
            sim=args.sim,
            verify_rtl=not args.no_rtl,
            resynthesize=not args.no_synth,
            out=args.output or DemoOptions.out,
            progress=not args.json,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    summary = run_demo(options, log=_progress)
    if args.json:
        print(json.dumps(summary))
    else:
        print((Path(options.out) / "summary.md").read_text())
        print(f"demo {'PASSED' if summary['passed'] else 'FAILED'}: report in {options.out}/")
    return 0 if summary["passed"] else 1


def _gemm_demo(args: argparse.Namespace) -> int:
    from tessera.estimators.cycles import gemm_cycles
    from tessera.models.gemm import Requant, gemm
    from tessera.sim.gemm import GemmCase, simulate_gemm

    cfg = _config("gemm", args)
    out = Path(args.output or "build/demo")
    _progress(f"1/4 generate {cfg.short_name} -> {out}")
    overrides = {"engine": "gemm", "output": str(out), "force": True, "json": False, "hls": False}
    gen_args = argparse.Namespace(**{**vars(args), **overrides})
    cmd_generate(gen_args)

    rq = Requant(multiplier=1 << 30, shift=38, zero_point=-3)
    cases = [
        GemmCase(1, 1, 1, requant=rq, seed=1),
        GemmCase(33, 19, 47, requant=rq, seed=2, idle=0.3, backpressure=0.3),
        GemmCase(17, 9, 64, requant=None, seed=3, data="extreme", backpressure=0.5),
        GemmCase(64, 64, 64, requant=rq, seed=4),
    ]
    _progress(f"2/4 simulate {len(cases)} GEMMs on Verilator (cocotb + cocotbext-axi)")
    results = simulate_gemm(cfg, cases, sim="verilator")

    _progress("3/4 check the golden accumulators against an independent int64 matmul")
    golden_ok = True
    for case in cases:
        a, b = case.operands()
        golden_ok &= bool(np.array_equal(gemm(a, b, cfg), a.astype(np.int64) @ b.astype(np.int64)))
    _progress("4/4 synthesize for xc7 with Yosys")
    synth = _synth("gemm", cfg, "xc7")

    rows = []
    for case, res in zip(cases, results, strict=True):
        model = gemm_cycles(case.m, case.n, case.k, cfg)
        rows.append(
            [
                case.label,
                "raw" if case.requant is None else "int8",
                f"{case.idle:.1f}/{case.backpressure:.1f}",
                "PASS" if res.passed else "FAIL",
                res.cycles,
                model.cycles,
                f"{100 * res.utilization:.2f} %",
            ]
        )
    print()
    _print_table(
        rows,
        ["GEMM MxNxK", "output", "idle/stall", "RTL vs golden", "cycles", "model", "utilization"],
    )
    print()
    _print_table(
        [[cfg.short_name, synth.lut, synth.ff, synth.dsp, synth.bram]],
        ["xc7 (Yosys)", "LUT", "FF", "DSP", "BRAM"],
    )
    ok = golden_ok and all(r.passed for r in results)
    print(f"\ndemo {'PASSED' if ok else 'FAILED'}: outputs in {out}")
    return 0 if ok else 1


# ---- train ------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from tessera.models.m3vit import (
        M3ViTConfig,
        digits_tasks,
        evaluate,
        expert_usage,
        save_weights,
        train_m3vit,
    )

    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    cfg = M3ViTConfig()
    _progress(f"training {cfg.short_name} ({cfg.parameter_count} parameters) on digits")
    model, history = train_m3vit(cfg, seed=args.seed, epochs=args.epochs)
    _, test = digits_tasks(0)
    tasks = ("digit", "parity")
    accuracy = {name: evaluate(model, test, task) for task, name in enumerate(tasks)}
    usage = {name: expert_usage(model, test, task) for task, name in enumerate(tasks)}
    metadata = {"seed": args.seed, "epochs": args.epochs, "data_seed": 0}
    save_weights(model, args.out, {**metadata, "test_accuracy": accuracy, "test_size": len(test)})
    report = {
        "config": cfg.to_dict(),
        **metadata,
        "steps": history.steps,
        "seconds": round(history.seconds, 2),
        "test_accuracy": accuracy,
        "expert_usage": {k: [list(map(int, c)) for c in v] for k, v in usage.items()},
        "weights": str(args.out),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"trained {history.steps} steps in {history.seconds:.1f} s -> {args.out}")
        for name in tasks:
            print(f"{name}: held-out accuracy {100 * accuracy[name]:.2f} % ({len(test)} images)")
    return 0


# ---- quantize ---------------------------------------------------------------------------------

M3VIT_TASKS = ("digit", "parity")


def _first_sentence(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception (library messages run over many lines)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    sentence = lines[0].split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence[:160]}"


def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from tessera.models.m3vit import DEFAULT_WEIGHTS, digits_tasks, load_m3vit
    from tessera.models.m3vit_quant import PRESETS, quantize_m3vit

    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    weights = DEFAULT_WEIGHTS if args.weights is None else Path(args.weights)
    if not weights.is_file():
        raise UsageError(
            f"no M3ViT weights at {weights}; train them with `tessera train m3vit -o {weights}`"
        )
    out = Path(args.out if args.out is not None else f"build/m3vit_{args.preset}.npz")
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; give the path of the .npz file to write")
    try:
        model, cfg = load_m3vit(weights)  # type: ignore[misc]
    except Exception as exc:  # a damaged file fails inside torch.load in many ways
        raise UsageError(
            f"cannot read M3ViT weights at {weights} ({_first_sentence(exc)}); "
            "train them again with `tessera train m3vit`"
        ) from None
    train, test = digits_tasks(0)
    try:
        model.check_input(train.images[:1], 0)
    except ValueError as exc:
        raise UsageError(f"weights at {weights} do not fit the digits tasks: {exc}") from None
    if cfg.num_tasks != len(M3VIT_TASKS):
        raise UsageError(
            f"weights at {weights} have {cfg.num_tasks} tasks; the digits tasks need "
            f"{len(M3VIT_TASKS)}"
        )
    if not 1 <= args.calibration <= len(train):
        raise UsageError(f"--calibration must be in [1, {len(train)}], got {args.calibration}")
    n_test = len(test) if args.test_images is None else args.test_images
    if not 1 <= n_test <= len(test):
        raise UsageError(f"--test-images must be in [1, {len(test)}], got {n_test}")

    preset = PRESETS[args.preset]
    _progress(f"quantizing {cfg.short_name} with preset {preset.short_name}")
    t0 = time.perf_counter()
    qm = quantize_m3vit(model, cfg, train.images[: args.calibration], preset)
    _progress(f"evaluating float and integer networks on {n_test} held-out images")
    images, labels = test.images[:n_test], test.labels[:n_test]
    float_acc, int_acc = {}, {}
    for task, name in enumerate(M3VIT_TASKS):
        with torch.no_grad():
            float_pred = model(images, task).argmax(dim=-1).numpy()
        truth = labels[:, task].numpy()
        float_acc[name] = int((float_pred == truth).sum()) / n_test
        int_acc[name] = int((qm.predict(images, task) == truth).sum()) / n_test
    try:
        qm.save(out)
    except OSError as exc:
        # The file system, not the input, failed; save() leaves no partial file behind.
        print(f"tessera: error: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    if args.json:
        report = {
            "model": "m3vit",
            "config": cfg.to_dict(),
            "preset": preset.to_dict(),
            "name": preset.short_name,
            "weights": str(weights),
            "calibration_images": args.calibration,
            "test_images": n_test,
            "float_accuracy": float_acc,
            "integer_accuracy": int_acc,
            "output": str(out),
            "seconds": round(seconds, 2),
        }
        print(json.dumps(report))
    else:
        rows = [
            [
                name,
                f"{100 * float_acc[name]:.2f} %",
                f"{100 * int_acc[name]:.2f} %",
                f"{100 * (int_acc[name] - float_acc[name]):+.2f}",
            ]
            for name in M3VIT_TASKS
        ]
        print(
            f"{preset.short_name}: {n_test} held-out images, calibration on "
            f"{args.calibration} training images"
        )
        _print_table(rows, ["task", "float", f"integer ({args.preset})", "points"])
        print(f"saved the integer network to {out} ({seconds:.1f} s)")
    return 0


# ---- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from tessera.host.device import LINKS
    from tessera.host.session import MODELS, Session
    from tessera.models.m3vit import digits_tasks
    from tessera.models.m3vit_quant import PRESETS

    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
    if args.preset not in PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.link is not None and args.link not in LINKS:
        raise UsageError(f"unknown link {args.link!r}; choose one of {', '.join(LINKS)}")
    for name, value in (("--batch", args.batch), ("--images", args.images)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    devices = [d for d in args.devices.split(",") if d]
    _, test = digits_tasks()
    count = len(test) if args.images is None else min(args.images, len(test))
    images, labels = test.images[:count], test.labels[:count].numpy()
    tasks = range(2) if args.task == "all" else [int(args.task)]
    try:
        session = Session(
            args.model, devices, preset=args.preset, clock_mhz=args.clock_mhz, link=args.link
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    results = {}
    with session:
        for task in tasks:
            batches = [images[i : i + args.batch] for i in range(0, count, args.batch)]
            logits = np.concatenate(
                session.run_batches(batches, task, progress=not args.json, total=len(batches))
            )
            with torch.no_grad():
                ref = session.qmodel.model(images, task).numpy()
            results[task] = {
                "accuracy": float((logits.argmax(-1) == labels[:, task]).mean()),
                "float_accuracy": float((ref.argmax(-1) == labels[:, task]).mean()),
                "agreement_with_float": float((logits.argmax(-1) == ref.argmax(-1)).mean()),
                "mean_abs_error": float(np.abs(logits - ref).mean()),
            }
        report = {"model": args.model, "preset": args.preset, "images": count, "tasks": results}
        report.update(session.report())
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.model} ({args.preset}) on {', '.join(d['name'] for d in report['devices'])}")
    for task, r in results.items():
        print(
            f"task {task}: accuracy {100 * r['accuracy']:.2f} % (float "
            f"{100 * r['float_accuracy']:.2f} %), agreement with float "
            f"{100 * r['agreement_with_float']:.2f} % over {count} images"
        )
    for plan in report["plans"]:
        where = ", ".join(f"{n} ops on {d}" for d, n in plan["ops_per_device"].items())
        print(
            f"plan task {plan['task']} batch {plan['batch']}: {where}; predicted "
            f"{1e6 * plan['predicted_seconds']:.1f} us per batch"
        )
    rate = report["modelled_images_per_second"]
    print(
        f"modelled {1e3 * report['modelled_seconds']:.3f} ms for {report['images']} images "
        f"({rate:,.0f} images/s); host wall time {report['wall_seconds']:.2f} s"
    )
    if report["failed"]:
        print(f"failed devices (work re-run elsewhere): {report['failed']}")
    return 0


# ---- doctor -----------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from tessera.cli.doctor import run_doctor

    return run_doctor(json_output=args.json)


class _Parser(argparse.ArgumentParser):
    # One line naming the problem, exit status 2 (argparse would add a usage block).
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"tessera: error: {message} (see `{self.prog} --help`)\n")


def _engine_parsers(parent: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    from tessera.cli.engines import ENGINES, add_config_args

    engines = parent.add_subparsers(
        dest="engine", required=True, metavar="ENGINE", parser_class=_Parser
    )
    parsers = []
    for name, spec in ENGINES.items():
        ep = engines.add_parser(name, help=spec.summary, description=spec.summary)
        add_config_args(ep, spec.config_class())
        parsers.append((name, ep))
    return parsers


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tessera`` command."""
    from tessera.cli.engines import ENGINES, add_config_args, integer

    parser = _Parser(prog="tessera", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("doctor", help="check the external tools and print fixes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("generate", help="write Verilog, register map and config of an engine")
    for _, ep in _engine_parsers(p):
        ep.add_argument("-o", "--output", required=True, help="output directory")
        ep.add_argument("--force", action="store_true", help="replace a non-empty output directory")
        ep.add_argument(
            "--hls", action="store_true", help="write the Vitis HLS project instead of Verilog"
        )
        ep.add_argument("--part", default="xczu9eg-ffvb1156-2-e", help="--hls: FPGA part")
        ep.add_argument("--clock-mhz", type=float, default=300.0, help="--hls: clock target")
        ep.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "csim", help="C-simulate an engine's HLS kernel (g++) and check it against the golden model"
    )
    for engine, ep in _engine_parsers(p):
        ENGINES[engine].add_case_args(ep)
        ep.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_csim)

    p = sub.add_parser(
        "simulate", help="run an engine's RTL with cocotb and check it against the golden model"
    )
    for engine, ep in _engine_parsers(p):
        ENGINES[engine].add_case_args(ep)
        ep.add_argument("--sim", choices=["icarus", "verilator"], default="verilator")
        ep.add_argument("--waves", action="store_true", help="dump a waveform, print its path")
        ep.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("synth", help="synthesize an engine with Yosys and print its resources")
    for _, ep in _engine_parsers(p):
        ep.add_argument("--family", choices=FAMILIES, default="xc7")
        ep.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a reference model (deterministic) and save it")
    p.add_argument("model", choices=["m3vit"], help="m3vit: tiny M3ViT on the digits tasks")
    p.add_argument("--epochs", type=integer, default=30)
    p.add_argument("--seed", type=integer, default=0)
    p.add_argument("-o", "--out", default="build/m3vit_tiny.pt", help="weights file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "quantize",
        help="post-training quantize a reference model into a golden integer network, evaluate "
        "it against the float one and save it",
    )
    p.add_argument("model", choices=["m3vit"], help="m3vit: the tiny M3ViT on the digits tasks")
    p.add_argument(
        "--preset",
        default="int8",
        help="int8, w4a8, edge-moe (power-of-two fixed point) or w2a8kv4 (default int8)",
    )
    p.add_argument(
        "--weights", default=None, help="float weights (default: the committed m3vit_tiny.pt)"
    )
    p.add_argument(
        "--calibration", type=integer, default=256, help="calibration images (first N of train)"
    )
    p.add_argument(
        "--test-images", type=integer, default=None, help="held-out images to evaluate (all)"
    )
    p.add_argument(
        "-o", "--out", default=None, help="network file (default build/m3vit_PRESET.npz)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)

    from tessera.cli.estimate import add_commands

    add_commands(sub, _Parser)

    p = sub.add_parser(
        "run", help="run a model on a mix of devices (placed by the cost model) over the test split"
    )
    p.add_argument("--model", default="m3vit-tiny", help="built-in model (m3vit-tiny)")
    p.add_argument(
        "--devices", default="cpu,fpga:emu", help="comma-separated: cpu, cuda[:N], fpga:emu[N]"
    )
    p.add_argument("--task", default="all", choices=["0", "1", "all"])
    p.add_argument("--preset", default="int8", help="quantization preset")
    p.add_argument("--images", type=integer, default=None, help="first N test images (all)")
    p.add_argument("--batch", type=integer, default=16)
    p.add_argument("--clock-mhz", type=float, default=300.0, help="FPGA engine clock")
    p.add_argument("--link", default=None, help="FPGA host link (pcie3x4, zynqmp-hp, ...)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="the tiny M3ViT end to end: quantize, generate and verify the engines, choose a "
        "design for a board, run mixed CPU/FPGA inference, write report/ (or: demo gemm)",
    )
    p.add_argument(
        "target",
        nargs="?",
        choices=["m3vit", "gemm"],
        default="m3vit",
        help="m3vit (default): the whole flow; gemm: generate, simulate, check and synthesize "
        "one GEMM engine",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="report directory (default report/; build/demo for gemm)",
    )
    from tessera.host.demo import BOARDS, DemoOptions

    demo = DemoOptions()  # the demo's defaults live in one place
    p.add_argument("--board", default=demo.board, choices=list(BOARDS), help="target board")
    p.add_argument(
        "--devices",
        default=None,
        help="host-side devices next to the FPGA (default cpu, plus cuda when there is a GPU)",
    )
    p.add_argument(
        "--presets", default=",".join(demo.presets), help="quantization presets to compare"
    )
    p.add_argument("--images", type=integer, default=None, help="first N test images (all 360)")
    p.add_argument("--batch", type=integer, default=demo.batch)
    p.add_argument("--sim", choices=["verilator", "icarus"], default=demo.sim)
    p.add_argument("--no-rtl", action="store_true", help="skip the RTL simulations")
    p.add_argument("--no-synth", action="store_true", help="skip re-synthesizing the chosen design")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_args(p, ENGINES["gemm"].config_class())
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tessera`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("idle", "backpressure"):
        value = getattr(args, name, 0.0)
        if not 0.0 <= value < 1.0:
            parser.error(f"--{name} must be in [0, 1), got {value}")
    from tessera.estimators.synthesis import SynthesisError
    from tessera.hls.csim import CsimError
    from tessera.sim.harness import SimulationError
    from tessera.sim.tools import ToolError

    try:
        return args.func(args)
    except UsageError as exc:
        parser.exit(2, f"tessera: error: {exc}\n")
    except (ToolError, SimulationError, SynthesisError, CsimError) as exc:
        # The environment, not the input, failed: say what and how to fix it (see `doctor`).
        parser.exit(1, f"tessera: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
