"""Design-space exploration: the fastest engines that fit a device, from the learned surrogate.

:func:`explore` enumerates ``TemporalGemm`` configurations (array shape, accumulator width,
operand bus widths) for a GEMM workload, or ``AttentionEngine`` configurations (parallelism,
lanes) for an attention workload, predicts each one's resources with the
:class:`~tessera.estimators.surrogate.Surrogate` for the device's family and its latency with the
exact cycle model, keeps the designs within the device budget, and marks the Pareto fronts of
latency vs LUT and latency vs DSP.
:func:`verify` re-synthesises the best designs with Yosys and reports predicted vs actual.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.estimators.cycles import attention_cycles, gemm_cycles
from tessera.estimators.devices import Device
from tessera.models.attention import AttentionConfig
from tessera.models.gemm import GemmConfig

__all__ = [
    "DesignPoint",
    "GemmWorkload",
    "Workload",
    "attention_candidates",
    "explore",
    "explore_gemm",
    "explore_m3vit",
    "gemm_candidates",
    "pareto_front",
    "parse_workload",
    "plot_front",
    "verify",
]

# Clock assumed for latency on Xilinx parts (the surrogate's Fmax is an ECP5 figure): a
# conservative figure for these engines on 7-series / UltraScale+ speed grade -1.
XILINX_CLOCK_MHZ = 200.0
# Clock assumed on ECP5 while the dataset has too few placed-and-routed designs for an Fmax model.
ECP5_CLOCK_MHZ = 100.0


@dataclass(frozen=True)
class Workload:
    """A workload to run: an (M, N, K) GEMM or one attention run.

    Attributes
    ----------
    engine : {"gemm", "attention", "m3vit"}
        Engine that runs it (``m3vit``: the whole network, searched by :func:`explore_m3vit`).
    shape : tuple of int
        ``(M, N, K)`` for a GEMM; ``(S, D, H)`` (sequence length, head dimension, heads) for
        attention.
    """

    engine: str
    shape: tuple[int, ...]

    @property
    def m(self) -> int:
        """GEMM M."""
        return self.shape[0]

    @property
    def n(self) -> int:
        """GEMM N."""
        return self.shape[1]

    @property
    def k(self) -> int:
        """GEMM K."""
        return self.shape[2]

    def cycles(self, cfg: Any) -> int:
        """Exact cycles of this workload on an engine configuration."""
        if self.engine == "gemm":
            return gemm_cycles(self.m, self.n, self.k, cfg).cycles
        return attention_cycles(self.shape[0], cfg)


#: Kept for the GEMM-only spelling.
GemmWorkload = Workload

_FORMS = {"gemm": (3, 3, "gemm:M,N,K"), "attention": (2, 3, "attention:S,D[,H]")}


def parse_workload(text: str) -> Workload:
    """Parse ``gemm:M,N,K``, ``attention:S,D[,H]`` (sequence length, head dim, heads) or
    ``m3vit-tiny`` (the whole built-in network, see :func:`explore_m3vit`).

    Raises
    ------
    ValueError
        On any other form, naming the expected ones.
    """
    if text.strip() == "m3vit-tiny":
        return Workload("m3vit", ())
    match = re.fullmatch(r"\s*(\w+)\s*:\s*([\d\s,]+)", text)
    forms = " or ".join([*(f[2] for f in _FORMS.values()), "m3vit-tiny"])
    if not match or match.group(1) not in _FORMS:
        raise ValueError(f"workload must look like {forms} (e.g. gemm:256,256,256), got {text!r}")
    engine = match.group(1)
    lo, hi, form = _FORMS[engine]
    try:
        values = tuple(int(v) for v in match.group(2).split(","))
    except ValueError:
        raise ValueError(f"workload must look like {form}, got {text!r}") from None
    if not lo <= len(values) <= hi:
        raise ValueError(f"workload must look like {form}, got {text!r}")
    if min(values) < 1:
        raise ValueError(f"workload dimensions must be >= 1, got {text!r}")
    if engine == "attention" and len(values) == 2:
        values = (*values, 1)
    return Workload(engine, values)


@dataclass(eq=False)
class DesignPoint:
    """One candidate design with its predictions.

    Attributes
    ----------
    config : GemmConfig or AttentionConfig
        The engine.
    predicted : dict
        Surrogate ``lut``, ``ff``, ``dsp``, ``bram`` (family units) and ``fmax_mhz``.
    cycles : int
        Exact cycle count of the workload.
    clock_mhz : float
        Clock used for the latency.
    fits : bool
        Within the device budget (times the utilisation limit).
    pareto_lut, pareto_dsp : bool
        On the latency / LUT or latency / DSP Pareto front of the fitting designs.
    actual : dict, optional
        Yosys counts after :func:`verify`.
    fixed : dict
        Predicted resources of the other engines of a whole-network design (empty for a
        single-engine workload); ``predicted`` is the searched engine alone.
    """

    config: Any
    predicted: dict[str, float]
    cycles: int
    clock_mhz: float
    fits: bool = False
    pareto_lut: bool = False
    pareto_dsp: bool = False
    actual: dict[str, float] | None = field(default=None)
    fixed: dict[str, float] = field(default_factory=dict)

    def total(self, resource: str) -> float:
        """Predicted ``resource`` of the whole design (searched engine plus shared engines)."""
        return self.predicted.get(resource, 0.0) + self.fixed.get(resource, 0.0)

    @property
    def latency_us(self) -> float:
        """Workload latency in microseconds at :attr:`clock_mhz`."""
        return self.cycles / self.clock_mhz

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "config": self.config.to_dict(),
            "name": self.config.short_name,
            "predicted": {k: round(v, 2) for k, v in self.predicted.items()},
            "cycles": self.cycles,
            "clock_mhz": round(self.clock_mhz, 2),
            "latency_us": round(self.latency_us, 3),
            "fits": self.fits,
            "pareto_lut": self.pareto_lut,
            "pareto_dsp": self.pareto_dsp,
            "actual": self.actual,
            "fixed": {k: round(v, 2) for k, v in self.fixed.items()},
        }


def gemm_candidates(max_macs: int = 1024) -> list[GemmConfig]:
    """The GEMM configurations :func:`explore_gemm` considers.

    Array sides 1..64 (powers of two and 3, 6, 12, 24, 48), at most ``max_macs`` MACs,
    accumulators of 24 or 32 bits, native or half-width operand buses.
    """
    sides = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    out = []
    for rows, cols, acc, bus in itertools.product(sides, sides, (24, 32), ("native", "narrow")):
        if rows * cols > max_macs:
            continue
        if bus == "narrow":
            if rows % 2 or cols % 2:
                continue
            a, b = rows // 2, cols // 2
        else:
            a = b = None
        out.append(
            GemmConfig(rows=rows, cols=cols, acc_bits=acc, a_stream_bytes=a, b_stream_bytes=b)
        )
    return out


def attention_candidates(workload: Workload, max_macs: int = 1024) -> list[AttentionConfig]:
    """The attention configurations :func:`explore` considers for a workload.

    ``head_dim`` and ``heads`` of the workload, ``max_seq`` the sequence length rounded up to a
    power of two (at least 16), ``parallelism`` 1..64 and ``lanes`` dividing ``head_dim``, at most
    ``max_macs`` MACs (``parallelism * lanes``).
    """
    seq_len, head_dim, heads = workload.shape
    if head_dim > 1024 or seq_len > 8192 or heads > 255:
        raise ValueError(
            f"attention workload {workload.shape} exceeds the engine's limits "
            "(S <= 8192, D <= 1024, H <= 255)"
        )
    max_seq = max(16, 1 << (seq_len - 1).bit_length())
    out = []
    for parallelism, lanes in itertools.product(
        (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64), (1, 2, 4, 8, 16, 32, 64)
    ):
        if head_dim % lanes or parallelism * lanes > max_macs or parallelism > max_seq:
            continue
        out.append(
            AttentionConfig(
                head_dim=head_dim,
                heads=heads,
                max_seq=max_seq,
                parallelism=parallelism,
                lanes=lanes,
            )
        )
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which points are Pareto-optimal when both coordinates are minimised."""
    flags = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (a <= x and b <= y) and (a < x or b < y) for j, (a, b) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


def explore(
    workload: Workload,
    device: Device,
    surrogate: Any,
    *,
    max_macs: int = 1024,
    max_utilization: float = 0.8,
    clock_mhz: float | None = None,
) -> list[DesignPoint]:
    """Predict every candidate engine for a workload and rank the ones that fit.

    Parameters
    ----------
    workload : Workload
        The GEMM or attention run.
    device : Device
        Target part (its family selects the surrogate's resource model).
    surrogate : Surrogate
        Fitted surrogate.
    max_macs : int, optional
        Largest array considered.
    max_utilization : float, optional
        Fraction of each resource a design may use (routing needs headroom).
    clock_mhz : float, optional
        Clock for latencies; default the predicted Fmax on ECP5 (:data:`ECP5_CLOCK_MHZ` without an
        Fmax model), :data:`XILINX_CLOCK_MHZ` on Xilinx parts.

    Returns
    -------
    list of DesignPoint
        Every candidate, sorted: fitting designs first, by latency then LUTs.
    """
    if workload.engine == "m3vit":
        raise ValueError("the m3vit-tiny workload needs the network: use explore_m3vit")
    if workload.engine == "gemm":
        candidates: list[Any] = [
            c for c in gemm_candidates(max_macs) if max(workload.shape) <= c.max_dim
        ]
    else:
        candidates = attention_candidates(workload, max_macs)
    if not candidates:
        raise ValueError(f"no {workload.engine} candidate with at most {max_macs} MACs")
    return _rank(
        candidates,
        workload.engine,
        [workload.cycles(c) for c in candidates],
        device,
        surrogate,
        max_utilization=max_utilization,
        clock_mhz=clock_mhz,
    )


def _rank(
    candidates: Sequence[Any],
    engine: str,
    cycles: Sequence[int],
    device: Device,
    surrogate: Any,
    *,
    max_utilization: float,
    clock_mhz: float | None,
    fixed: Sequence[dict[str, float]] | None = None,
) -> list[DesignPoint]:
    # Predict, check the budget (with the other engines' resources, one dict per candidate),
    # mark the fronts, sort.
    from tessera.estimators.surrogate import row_for

    if not 0 < max_utilization <= 1:
        raise ValueError(f"max_utilization must be in (0, 1], got {max_utilization}")
    preds = surrogate.predict([row_for(engine, c, device.family) for c in candidates])
    budget = device.budget()
    points = []
    for i, cfg in enumerate(candidates):
        predicted = {t: float(v[i]) for t, v in preds.items() if t in ("lut", "ff", "dsp", "bram")}
        if "fmax_mhz" in preds:
            predicted["fmax_mhz"] = float(preds["fmax_mhz"][i])
        if clock_mhz:
            clock = clock_mhz
        elif device.family == "ecp5":
            clock = predicted.get("fmax_mhz", ECP5_CLOCK_MHZ)
        else:
            clock = XILINX_CLOCK_MHZ
        point = DesignPoint(cfg, predicted, cycles[i], clock, fixed=dict(fixed[i] if fixed else {}))
        point.fits = all(point.total(r) <= max_utilization * budget[r] for r in budget)
        points.append(point)
    feasible = [p for p in points if p.fits]
    for flag_name, resource in (("pareto_lut", "lut"), ("pareto_dsp", "dsp")):
        flags = pareto_front([(p.latency_us, p.total(resource)) for p in feasible])
        for p, flag in zip(feasible, flags, strict=True):
            setattr(p, flag_name, flag)
    points.sort(key=lambda p: (not p.fits, p.latency_us, p.predicted.get("lut", 0.0)))
    return points


def explore_m3vit(
    qm: Any,
    images: Any,
    device: Device,
    surrogate: Any,
    *,
    max_macs: int = 1024,
    max_utilization: float = 0.8,
    clock_mhz: float | None = None,
) -> list[DesignPoint]:
    """Search the MAC array of an accelerator for the whole M³ViT (``--workload m3vit-tiny``).

    The accelerator runs every op of the network one after the other: the linear layers on a
    ``TemporalGemm`` of ``rows x cols`` MACs, whose configuration is searched, and the MoE layers
    (gate GEMM, routing, expert FFNs) on a ``MoeEngine`` with an array of the same shape, next to
    the network's own attention, LayerNorm and GELU engines. :attr:`DesignPoint.predicted` is
    the ``TemporalGemm``; :attr:`DesignPoint.fixed` holds the predicted resources of the other
    engines (the ``MoeEngine`` at the point's array shape plus the shared engines), which count
    against the budget.

    Parameters
    ----------
    qm : QuantM3ViT
        The integer network.
    images : array_like
        Sample images; the MoE layers' cycles follow the routing the network gives them.
    device, surrogate, max_macs, max_utilization, clock_mhz
        As in :func:`explore`.

    Returns
    -------
    list of DesignPoint
        :attr:`DesignPoint.cycles` is per image, averaged over the images and tasks, from
        :func:`~tessera.estimators.m3vit_cycles.accelerator_cycles` (the RTL's count).
    """
    from tessera.estimators.m3vit_cycles import (
        accelerator_cycles,
        m3vit_routings,
        moe_config_for,
    )
    from tessera.estimators.surrogate import row_for

    d = qm.cfg.embed_dim
    candidates = [c for c in gemm_candidates(max_macs) if d % c.cols == 0]
    if not candidates:
        raise ValueError(f"no gemm candidate with at most {max_macs} MACs")
    count = len(images)
    if count < 1:
        raise ValueError("explore_m3vit needs at least one sample image")
    routings = [m3vit_routings(qm, images, t) for t in range(qm.cfg.num_tasks)]
    cycles = [
        round(
            sum(
                sum(accelerator_cycles(qm, t, r, gemm_cfg=c).values())
                for t, r in enumerate(routings)
            )
            / (count * len(routings))
        )
        for c in candidates
    ]
    shared = {
        "attention": qm.attn_cfg,
        "layernorm": qm.blocks[0].norm1.cfg,
        "gelu": qm.moe_cfg.gelu,
    }
    resources = ("lut", "ff", "dsp", "bram")
    preds = surrogate.predict([row_for(e, c, device.family) for e, c in shared.items()])
    common = {r: float(sum(preds[r])) for r in resources if r in preds}
    moe = surrogate.predict(
        [row_for("moe", moe_config_for(qm, c), device.family) for c in candidates]
    )
    fixed = [
        {r: common[r] + float(moe[r][i]) for r in resources if r in common and r in moe}
        for i in range(len(candidates))
    ]
    return _rank(
        candidates,
        "gemm",
        cycles,
        device,
        surrogate,
        max_utilization=max_utilization,
        clock_mhz=clock_mhz,
        fixed=fixed,
    )


def explore_gemm(
    workload: Workload, device: Device, surrogate: Any, **options: Any
) -> list[DesignPoint]:
    """:func:`explore` for a GEMM workload (same options)."""
    if workload.engine != "gemm":
        raise ValueError(f"explore_gemm needs a gemm workload, got {workload.engine}")
    return explore(workload, device, surrogate, **options)


def verify(points: Sequence[DesignPoint], family: str, cache_dir: Path | None = None) -> float:
    """Synthesise designs with Yosys and store the counts in ``point.actual``.

    Parameters
    ----------
    points : sequence of DesignPoint
        Designs to check (typically the top few).
    family : str
        Synthesis family.
    cache_dir : pathlib.Path, optional
        Synthesis cache.

    Returns
    -------
    float
        Wall seconds spent.
    """
    from tessera.cli.engines import ENGINES
    from tessera.estimators.synthesis import synthesize

    start = time.perf_counter()
    for point in points:
        engine = "gemm" if isinstance(point.config, GemmConfig) else "attention"
        generated = ENGINES[engine].generator()(point.config, None)
        res = synthesize(generated["verilog"], generated["top"], family, cache_dir=cache_dir)
        point.actual = {"lut": res.lut, "ff": res.ff, "dsp": res.dsp, "bram": res.bram}
    return time.perf_counter() - start


def plot_front(points: Sequence[DesignPoint], path: str | Path, title: str = "") -> Path:
    """Scatter latency vs LUT and vs DSP of the fitting designs, Pareto fronts highlighted.

    Returns
    -------
    pathlib.Path
        The written image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feasible = [p for p in points if p.fits]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, resource, flag in ((axes[0], "lut", "pareto_lut"), (axes[1], "dsp", "pareto_dsp")):
        ax.scatter(
            [p.total(resource) for p in feasible],
            [p.latency_us for p in feasible],
            s=10,
            c="0.7",
            label="fits",
        )
        front = sorted((p for p in feasible if getattr(p, flag)), key=lambda p: p.latency_us)
        ax.plot(
            [p.total(resource) for p in front],
            [p.latency_us for p in front],
            "o-",
            color="tab:red",
            label="Pareto front",
        )
        ax.set_xlabel(f"predicted {resource.upper()}")
        ax.set_ylabel("latency (µs)")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
