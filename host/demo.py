"""The end-to-end demo: the tiny M³ViT from float weights to a mixed CPU/FPGA run, with a report.

:func:`run_demo` (``tessera demo``) takes the built-in model through every layer of tessera:

1. **load** the shipped float weights and measure their accuracy on the digits test split;
2. **quantize** them with each preset and measure the integer networks' accuracy (and, for the
   deployed ``int8`` network, which experts each task's tokens are routed to);
3. **generate** the network's engines (GEMM, attention, LayerNorm, GELU, MoE) as Verilog with
   their register maps;
4. **verify** them on RTL: encoder block 0 (every arithmetic op on the engines) and the first MoE
   layer, each on a real test image, bit for bit against the integer network;
5. **explore** MAC arrays for the whole network on a board with the learned surrogate, pick the
   fastest that fits, and re-synthesize it with Yosys (predicted vs actual);
6. **run** the whole test split on a mix of devices (the FPGA emulated bit-exactly with the
   chosen array and the board's clock and host link), placed op by op by the cost model;
7. **report**: ``report/`` with plots (accuracy per task, latency / resource Pareto fronts, the
   per-device timeline of one batch, expert activation per task), ``summary.md`` and
   ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BOARDS", "DemoOptions", "run_demo"]

#: Boards the demo can target: the part the DSE budgets and the FPGA's host link.
BOARDS: dict[str, tuple[str, str]] = {
    "pynq-z2": ("xc7z020", "zynq7-hp"),
    "ultra96": ("xczu3eg", "zynqmp-hp"),
    "kv260": ("xck26", "zynqmp-hp"),
    "zcu102": ("xczu9eg", "zynqmp-hp"),
}


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What the demo runs.

    Attributes
    ----------
    board : str
        A key of :data:`BOARDS`.
    devices : tuple of str, optional
        Host-side devices next to the FPGA (``cpu``, ``cuda``...); ``fpga:emu`` is added.
        Default: the CPU, plus the GPU when torch sees one.
    presets : tuple of str
        Quantization presets to evaluate; ``int8`` is always included and is the one deployed.
    images : int or None
        First N test images (all 360 by default).
    batch : int
        Images per batch of the mixed run.
    sim : {"icarus", "verilator"}
        RTL simulator (Icarus starts at once; Verilator compiles each design first, minutes on
        two cores, then runs faster).
    verify_rtl, resynthesize : bool
        Run the RTL simulations; re-synthesize the chosen design.
    out : str
        Report directory.
    build : str, optional
        Generated RTL and synthesis cache (default ``<build root>/demo``).
    progress : bool
        Progress bars and step lines on stderr.
    """

    board: str = "pynq-z2"
    devices: tuple[str, ...] | None = None
    presets: tuple[str, ...] = ("int8", "w4a8", "edge-moe")
    images: int | None = None
    batch: int = 16
    sim: str = "icarus"
    verify_rtl: bool = True
    resynthesize: bool = True
    out: str = "report"
    build: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from tessera.models.m3vit_quant import PRESETS

        if self.board not in BOARDS:
            raise ValueError(f"unknown board {self.board!r}: use one of {', '.join(BOARDS)}")
        for preset in self.presets:
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        if self.images is not None and self.images < 1:
            raise ValueError(f"images must be >= 1, got {self.images}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.sim not in ("verilator", "icarus"):
            raise ValueError(f"sim must be verilator or icarus, got {self.sim!r}")
        if any(d.startswith("fpga") for d in self.devices or ()):
            raise ValueError("devices lists the host-side devices; the FPGA is added by the demo")


def run_demo(
    options: DemoOptions | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the demo and write its report.

    Parameters
    ----------
    options : DemoOptions, optional
        Defaults: PYNQ-Z2, CPU + emulated FPGA, the whole test split.
    log : callable, optional
        Receives one line per step (default: nothing).

    Returns
    -------
    dict
        The summary also written to ``summary.json``; ``passed`` is false if an RTL check
        failed, the chosen array changed the integer network's results, or the mixed run's
        accuracy differs from the integer network's by more than one image in a hundred.
    """
    opts = options or DemoOptions()
    if opts.build is None:
        from tessera.sim.harness import default_build_root

        opts = dataclasses.replace(opts, build=str(default_build_root() / "demo"))
    say = log or (lambda _line: None)
    out = Path(opts.out)
    summary: dict[str, Any] = {"options": dataclasses.asdict(opts), "seconds": {}}
    plots: dict[str, Path] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        summary["seconds"][name] = round(now - clock, 2)
        clock = now

    # Plots go to a scratch directory that replaces the report at the end: a failed run
    # leaves the previous report intact.
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    scratch.chmod(0o755)
    try:
        _pipeline(opts, say, step, summary, plots, scratch)
        summary["plots"] = {k: str(out / p.name) for k, p in plots.items()}
        summary["total_seconds"] = round(sum(summary["seconds"].values()), 2)
        (scratch / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (scratch / "summary.md").write_text(_markdown(summary))
        if out.exists():
            shutil.rmtree(out)
        os.replace(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def _pipeline(
    opts: DemoOptions,
    say: Callable[[str], None],
    step: Callable[[str], None],
    summary: dict[str, Any],
    plots: dict[str, Path],
    scratch: Path,
) -> None:
    import torch

    from tessera.estimators.m3vit_cycles import expert_activation, m3vit_routings
    from tessera.models.m3vit import digits_tasks, evaluate, load_m3vit
    from tessera.models.m3vit_quant import quantize_m3vit

    # 1. load
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    count = len(test) if opts.images is None else min(opts.images, len(test))
    images, labels = test.images[:count], test.labels[:count].numpy()
    subset = dataclasses.replace(test, images=images, labels=test.labels[:count])
    tasks = range(cfg.num_tasks)
    accuracy: dict[str, list[float]] = {
        "float": [evaluate(model, subset, t) for t in tasks]  # type: ignore[arg-type]
    }
    say(
        f"1/7 loaded {cfg.short_name} ({cfg.parameter_count:,} parameters); float accuracy "
        + ", ".join(f"task {t} {100 * a:.2f} %" for t, a in enumerate(accuracy["float"]))
        + f" on {count} test images"
    )
    step("load")

    # 2. quantize
    calibration = train.images[:256]
    presets = ["int8", *[p for p in opts.presets if p != "int8"]]
    networks = {p: quantize_m3vit(model, cfg, calibration, p) for p in presets}
    qm = networks["int8"]
    routings = {}
    for preset, net in networks.items():
        hits = []
        for t in tasks:
            if preset == "int8":
                trace = net.per_layer_outputs(images, t)
                routings[t] = m3vit_routings(net, images, t, trace=trace)
                pred = trace["logits"].argmax(-1)
            else:
                pred = net.predict(images, t)
            hits.append(float((pred == labels[:, t]).mean()))
        accuracy[preset] = hits
    activation = {t: expert_activation(routings[t], cfg.num_experts) for t in tasks}
    summary["accuracy"] = accuracy
    summary["expert_tokens"] = {str(t): a.tolist() for t, a in activation.items()}
    say(
        "2/7 quantized: "
        + "; ".join(
            f"{p} " + "/".join(f"{100 * a:.2f}" for a in accuracy[p]) + " %" for p in presets
        )
    )
    step("quantize")

    # 3. generate
    from tessera.cli.engines import ENGINES

    engines = {
        "gemm": qm.gemm_cfg,
        "attention": qm.attn_cfg,
        "layernorm": qm.blocks[0].norm1.cfg,
        "gelu": qm.moe_cfg.gelu,
        "moe": qm.moe_cfg,
    }
    rtl_dir = Path(opts.build) / "rtl"
    generated = {}
    for name, ecfg in engines.items():
        target = rtl_dir / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        ENGINES[name].generator()(ecfg, target)
        generated[name] = {
            "config": ecfg.short_name,
            "files": sorted(p.name for p in target.iterdir()),
        }
    summary["generated"] = generated
    say(f"3/7 generated {', '.join(generated)} Verilog + register maps in {rtl_dir}")
    step("generate")

    # 4. verify on RTL
    rtl: dict[str, Any] = {}
    if opts.verify_rtl:
        rtl = _verify_rtl(qm, images, opts.sim)
        say(
            "4/7 RTL on "
            + opts.sim
            + ": "
            + "; ".join(f"{k} {'bit-exact' if v['passed'] else 'MISMATCH'}" for k, v in rtl.items())
        )
    else:
        say("4/7 RTL verification skipped")
    summary["rtl"] = rtl
    step("verify_rtl")

    # 5. explore
    from tessera.estimators.devices import get_device
    from tessera.estimators.dse import explore_m3vit, plot_front, verify
    from tessera.estimators.m3vit_cycles import moe_config_for
    from tessera.estimators.surrogate import trained_surrogate

    part, link = BOARDS[opts.board]
    device = get_device(part)
    points = explore_m3vit(qm, images[:8], device, trained_surrogate())
    feasible = [p for p in points if p.fits]
    if not feasible:
        raise ValueError(f"no MAC array fits {part} next to the MoE and shared engines")
    best = feasible[0]
    if opts.resynthesize:
        verify([best], device.family, cache_dir=Path(opts.build) / "synth")
    plots["pareto"] = plot_front(points, scratch / "pareto.png", f"m3vit-tiny on {part}")
    summary["design"] = {
        "board": opts.board,
        "part": part,
        "candidates": len(points),
        "fitting": len(feasible),
        **best.to_dict(),
    }
    act = best.actual or {}
    say(
        f"5/7 DSE on {part}: {len(feasible)} of {len(points)} arrays fit; chose "
        f"{best.config.rows}x{best.config.cols} acc{best.config.acc_bits}, "
        f"{best.cycles:,} cycles per image ({best.latency_us:.1f} us at {best.clock_mhz:.0f} MHz)"
        + (
            f"; array LUT {best.predicted['lut']:.0f} predicted / {act['lut']} synthesized, "
            f"DSP {best.predicted['dsp']:.0f} / {act['dsp']}"
            if act
            else ""
        )
    )
    step("dse")

    # 6. mixed run with the chosen array
    from tessera.host.session import Session

    deployed = dataclasses.replace(
        qm, gemm_cfg=best.config, moe_cfg=moe_config_for(qm, best.config)
    )
    sample = images[: min(count, 16)]
    same = all(np.array_equal(deployed.forward(sample, t), qm.forward(sample, t)) for t in tasks)
    host = opts.devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    devices = [*host, "fpga:emu"]
    run: dict[str, Any] = {"devices": devices, "array_bit_exact": same, "tasks": {}}
    with Session(deployed, devices, clock_mhz=best.clock_mhz, link=link) as session:
        for t in tasks:
            batches = [images[i : i + opts.batch] for i in range(0, count, opts.batch)]
            logits = np.concatenate(
                session.run_batches(batches, t, progress=opts.progress, total=len(batches))
            )
            with torch.no_grad():
                ref = model(images, t).numpy()
            run["tasks"][str(t)] = {
                "accuracy": float((logits.argmax(-1) == labels[:, t]).mean()),
                "agreement_with_int8": float((logits.argmax(-1) == qm.predict(images, t)).mean()),
                "agreement_with_float": float((logits.argmax(-1) == ref.argmax(-1)).mean()),
            }
        report = session.report()
        # One batch per task on a fresh timeline, for the per-device plot.
        for d in session.devices:
            d.reset_timeline()
        for t in tasks:
            session.run(images[: opts.batch], t)
        plots["timeline"] = _plot_timeline(session.timeline(), scratch / "timeline.png")
    run.update(
        {
            k: report[k]
            for k in (
                "plans",
                "images",
                "wall_seconds",
                "modelled_seconds",
                "modelled_images_per_second",
                "crossings",
                "transfers",
                "busy_seconds",
                "failed",
            )
        }
    )
    summary["run"] = run
    say(
        f"6/7 ran {count} images x {len(tasks)} tasks on {', '.join(devices)}: "
        + ", ".join(f"task {t} {100 * r['accuracy']:.2f} %" for t, r in run["tasks"].items())
        + f"; modelled {run['modelled_images_per_second']:,.0f} images/s, "
        f"wall {run['wall_seconds']:.1f} s"
    )
    step("run")

    # 7. plots
    mixed = [run["tasks"][str(t)]["accuracy"] for t in tasks]
    plots["accuracy"] = _plot_accuracy({**accuracy, "mixed run": mixed}, scratch / "accuracy.png")
    plots["experts"] = _plot_experts(activation, sorted(routings[0]), scratch / "experts.png")
    int8_acc = accuracy["int8"]
    summary["passed"] = bool(
        all(v["passed"] for v in rtl.values())
        and same
        and all(abs(r["accuracy"] - int8_acc[int(t)]) <= 0.01 for t, r in run["tasks"].items())
    )
    say(f"7/7 report: {', '.join(sorted(plots))} plots, summary.md, summary.json")
    step("report")


def _verify_rtl(qm: Any, images: Any, sim: str) -> dict[str, dict[str, Any]]:
    """Encoder block 0 and the first MoE layer on RTL, each on the first test image."""
    from tessera.estimators.moe_cycles import moe_engine_cycles
    from tessera.models.moe import moe_layer
    from tessera.sim.encoder import simulate_encoder_layer
    from tessera.sim.moe import MoeCase, simulate_moe

    out: dict[str, dict[str, Any]] = {}
    enc = simulate_encoder_layer(qm, images[0], block=0, sim=sim)  # type: ignore[arg-type]
    out["encoder block 0"] = {
        "passed": enc.passed,
        "ops": len(enc.ops),
        "cycles": enc.cycles,
        "sim_seconds": round(enc.sim_seconds, 2),
    }
    block = next(i for i, b in enumerate(qm.blocks) if b.moe is not None)
    task = 1
    trace = qm.per_layer_outputs(images[:1], task)
    tokens = qm.moe_norm(block, trace[f"block{block}.attn"])[0]
    # A 4 x 8 array keeps the simulation short; the layer's integers do not depend on it.
    cfg = dataclasses.replace(qm.moe_cfg, rows=4, cols=8)
    case = MoeCase(len(tokens), task=task, weights=qm.blocks[block].moe, x=tokens, name="digit")
    (res,) = simulate_moe(cfg, [case], sim=sim)  # type: ignore[arg-type]
    _, routing = moe_layer(tokens, qm.blocks[block].moe, task, cfg)
    out[f"MoE layer (block {block})"] = {
        "passed": res.passed,
        "tokens": len(tokens),
        "experts_loaded": len(routing.loaded_experts),
        "cycles": res.cycles,
        "model_cycles": moe_engine_cycles(routing, cfg)["cycles"],
        "sim_seconds": round(res.sim_seconds, 2),
    }
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_accuracy(accuracy: dict[str, list[float]], path: Path) -> Path:
    plt = _pyplot()
    names = list(accuracy)
    tasks = len(accuracy[names[0]])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = np.arange(tasks) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, [100 * a for a in accuracy[name]], width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(tasks), ["task 0: digit", "task 1: parity"][:tasks])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("float vs integer networks")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_experts(
    activation: dict[int, npt.NDArray[Any]], blocks: Sequence[int], path: Path
) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(activation), figsize=(4 * len(activation), 2.8))
    axes = np.atleast_1d(axes)
    vmax = max(int(a.max()) for a in activation.values())
    for ax, (task, counts) in zip(axes, activation.items(), strict=True):
        image = ax.imshow(counts, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (r, c), v in np.ndenumerate(counts):
            ax.text(c, r, str(v), ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(counts.shape[1]), [f"expert {e}" for e in range(counts.shape[1])])
        ax.set_yticks(range(len(blocks)), [f"block {b}" for b in blocks] if ax is axes[0] else [])
        ax.set_title(f"task {task}: tokens per expert")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_timeline(events: Sequence[Any], path: Path) -> Path:
    plt = _pyplot()
    devices = sorted({e.device for e in events})
    t0 = min(e.start for e in events)
    colors = {"run": "tab:blue", "copy_in": "tab:orange", "copy_out": "tab:green"}
    fig, ax = plt.subplots(figsize=(10, 1 + 0.6 * len(devices)))
    for row, dev in enumerate(devices):
        for kind, color in colors.items():
            spans = [
                (1e6 * (e.start - t0), 1e6 * (e.end - e.start))
                for e in events
                if e.device == dev and e.kind == kind
            ]
            if spans:
                ax.broken_barh(
                    spans, (row - 0.35, 0.7), color=color, label=kind if row == 0 else None
                )
    ax.set_yticks(range(len(devices)), devices)
    ax.set_xlabel("modelled time (µs): one batch per task")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(summary: dict[str, Any]) -> str:
    acc = summary["accuracy"]
    lines = ["# tessera demo: M³ViT-tiny on digits", ""]
    lines += ["## Accuracy (test split)", "", "| network | task 0 (digit) | task 1 (parity) |"]
    lines += ["|---|---|---|"]
    for name, values in acc.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f} %" for v in values) + " |")
    run = summary["run"]
    lines.append(
        f"| mixed run ({', '.join(run['devices'])}) | "
        + " | ".join(f"{100 * r['accuracy']:.2f} %" for r in run["tasks"].values())
        + " |"
    )
    lines += ["", "## RTL verification", "", "| check | result | cycles |", "|---|---|---|"]
    for name, r in summary["rtl"].items():
        lines.append(f"| {name} | {'bit-exact' if r['passed'] else 'MISMATCH'} | {r['cycles']:,} |")
    d = summary["design"]
    cfg = d["config"]
    lines += ["", f"## Design for {d['board']} ({d['part']})", ""]
    lines.append(
        f"{d['fitting']} of {d['candidates']} MAC arrays fit. Chosen: {cfg['rows']}x{cfg['cols']}"
        f" acc{cfg['acc_bits']}, {d['cycles']:,} cycles per image, {d['latency_us']} µs at "
        f"{d['clock_mhz']} MHz."
    )
    lines += [
        "",
        "| resource | array predicted | array synthesized | MoE and shared engines predicted |",
    ]
    lines += ["|---|---|---|---|"]
    for r in ("lut", "ff", "dsp", "bram"):
        actual = (d["actual"] or {}).get(r)
        shown = "-" if actual is None else f"{actual:,.0f}"
        lines.append(f"| {r.upper()} | {d['predicted'][r]:,.0f} | {shown} | {d['fixed'][r]:,.0f} |")
    lines += ["", "## Mixed run", ""]
    lines.append(
        f"{run['images']} image-runs, modelled {run['modelled_images_per_second']:,.0f} images/s,"
        f" host wall time {run['wall_seconds']:.1f} s; {run['crossings']} domain crossings."
    )
    for plan in run["plans"]:
        lines.append(
            f"- task {plan['task']}, batch {plan['batch']}: "
            + ", ".join(f"{n} ops on {dev}" for dev, n in plan["ops_per_device"].items())
            + f"; predicted {1e6 * plan['predicted_seconds']:.1f} µs per batch"
        )
    lines += ["", "## Step times (s)", ""]
    lines.append(", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
    lines += ["", *(f"![{k}]({Path(v).name})" for k, v in summary["plots"].items()), ""]
    return "\n".join(lines)
