"""The engines the command line knows: config class, generator, simulator and case options.

Each engine's generator options are derived from the fields of its config dataclass (``rows`` ->
``--rows``), so the command line never restates a parameter the config already defines, and a bad
value is rejected by the config's own validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ENGINES", "EngineSpec", "add_config_args", "config_from_args", "integer"]


def integer(text: str) -> int:
    """argparse type: an integer in any Python literal base (``0x10`` works)."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class EngineSpec:
    """How the command line builds, generates and simulates one engine.

    Attributes
    ----------
    name : str
        Engine name on the command line.
    summary : str
        One-line description for ``--help``.
    config : str
        ``module:Class`` of the frozen config dataclass.
    generate : str
        ``module:function`` with signature ``(cfg, out_dir) -> dict`` (``verilog``, ``top``...).
    add_case_args : callable
        Adds the options of one simulation case to a parser.
    make_cases : callable
        ``(cfg, args) -> cases``: the cases the options describe (``ValueError`` if the engine
        cannot run them).
    simulate : callable
        ``(cfg, cases, args) -> (results, extra)``: runs the cases and returns the simulator
        results and extra report fields.
    csim : callable, optional
        ``(cfg, case) -> (got, expected)``: the HLS kernel's C-simulation output of one case and
        the golden model's, as arrays; ``None`` when the engine has no HLS kernel yet.
    """

    name: str
    summary: str
    config: str
    generate: str
    add_case_args: Callable[[argparse.ArgumentParser], None]
    make_cases: Callable[[Any, argparse.Namespace], list[Any]]
    simulate: Callable[[Any, list[Any], argparse.Namespace], tuple[list[Any], dict[str, Any]]]
    csim: Callable[[Any, Any], tuple[Any, Any]] | None = None

    def config_class(self) -> type:
        return _load(self.config)

    def generator(self) -> Callable[..., dict[str, Any]]:
        return _load(self.generate)


def add_config_args(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One ``--field-name`` option per field of ``config_class`` (default: the config's)."""
    group = parser.add_argument_group(f"{config_class.__name__} (engine parameters)")
    for field in dataclasses.fields(config_class):
        default = field.default
        option = "--" + field.name.replace("_", "-")
        dest = f"cfg_{field.name}"
        metavar = field.name.upper()
        if isinstance(default, enum.Enum):
            choices = [member.value for member in type(default)]
            group.add_argument(option, dest=dest, choices=choices, help=f"default {default.value}")
        elif isinstance(default, bool):
            group.add_argument(
                option, dest=dest, type=lambda t: t.lower() in ("1", "true", "yes"), help="0 / 1"
            )
        elif isinstance(default, float):
            group.add_argument(
                option, dest=dest, type=float, metavar=metavar, help=f"default {default}"
            )
        else:
            shown = "derived" if default is None else default
            group.add_argument(
                option, dest=dest, type=integer, metavar=metavar, help=f"default {shown}"
            )


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """Build the config from the options given; the config validates them (``ValueError``)."""
    values = {}
    for field in dataclasses.fields(config_class):
        value = getattr(args, f"cfg_{field.name}", None)
        if value is not None:
            values[field.name] = value
    return config_class(**values)


def _stall_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=integer, default=0, help="seeds data and stall patterns")
    parser.add_argument(
        "--idle", type=float, default=0.0, help="probability of an idle input cycle"
    )
    parser.add_argument(
        "--backpressure", type=float, default=0.0, help="probability of an output stall"
    )


# --- gemm -------------------------------------------------------------------------------------


def _gemm_case_args(p: argparse.ArgumentParser) -> None:
    for dim in ("m", "n", "k"):
        p.add_argument(f"--{dim}", type=integer, required=True, help=f"{dim.upper()} dimension")
    p.add_argument("--raw", action="store_true", help="raw int32 accumulators instead of int8")
    p.add_argument("--multiplier", type=integer, default=1 << 30)
    p.add_argument("--shift", type=integer, default=38)
    p.add_argument("--zero-point", type=integer, default=0)
    _stall_args(p)


def _gemm_cases(cfg: Any, args: argparse.Namespace) -> list[Any]:
    from tessera.models.gemm import Requant
    from tessera.sim.gemm import GemmCase

    cfg.check_shape(args.m, args.n, args.k)
    requant = None if args.raw else Requant(args.multiplier, args.shift, args.zero_point)
    return [
        GemmCase(
            args.m,
            args.n,
            args.k,
            requant=requant,
            seed=args.seed,
            idle=args.idle,
            backpressure=args.backpressure,
        )
    ]


def _gemm_simulate(
    cfg: Any, cases: list[Any], args: argparse.Namespace
) -> tuple[list[Any], dict[str, Any]]:
    from tessera.estimators.cycles import gemm_cycles
    from tessera.sim.gemm import simulate_gemm

    results = simulate_gemm(cfg, cases, sim=args.sim, waves=args.waves)
    model = gemm_cycles(args.m, args.n, args.k, cfg)
    return results, {"m": args.m, "n": args.n, "k": args.k, "model_cycles": model.cycles}


def _gemm_csim(cfg: Any, case: Any) -> tuple[Any, Any]:
    from tessera.hls.csim import csim_gemm
    from tessera.models.gemm import gemm

    a, b = case.operands()
    return csim_gemm(cfg, a, b, case.requant), gemm(a, b, cfg, case.requant)


ENGINES: dict[str, EngineSpec] = {
    "gemm": EngineSpec(
        name="gemm",
        summary="TemporalGemm: int8 GEMM on a fixed MAC array, any M/N/K at run time",
        config="tessera.models.gemm:GemmConfig",
        generate="tessera.rtl.temporal_gemm:generate_gemm",
        add_case_args=_gemm_case_args,
        make_cases=_gemm_cases,
        simulate=_gemm_simulate,
        csim=_gemm_csim,
    ),
}


# --- gelu -------------------------------------------------------------------------------------


def _gelu_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=integer, default=4096, help="elements to stream")
    p.add_argument("--data", choices=["random", "sweep", "extreme"], default="random")
    _stall_args(p)


def _gelu_cases(cfg: Any, args: argparse.Namespace) -> list[Any]:
    from tessera.sim.gelu import GeluCase

    return [
        GeluCase(
            args.count,
            seed=args.seed,
            data=args.data,
            idle=args.idle,
            backpressure=args.backpressure,
        )
    ]


def _gelu_simulate(
    cfg: Any, cases: list[Any], args: argparse.Namespace
) -> tuple[list[Any], dict[str, Any]]:
    from tessera.sim.gelu import simulate_gelu

    return simulate_gelu(cfg, cases, sim=args.sim, waves=args.waves), {}


def _gelu_csim(cfg: Any, case: Any) -> tuple[Any, Any]:
    from tessera.hls.gelu import csim_gelu
    from tessera.models.gelu import gelu

    x = case.inputs(cfg)
    return csim_gelu(cfg, x), gelu(x, cfg)


ENGINES["gelu"] = EngineSpec(
    name="gelu",
    summary="GeluRom: GELU = ReLU - delta(|x|), delta from a ROM with linear interpolation",
    config="tessera.models.gelu:GeluConfig",
    generate="tessera.rtl.gelu:generate_gelu",
    add_case_args=_gelu_case_args,
    make_cases=_gelu_cases,
    simulate=_gelu_simulate,
    csim=_gelu_csim,
)


# --- softmax ----------------------------------------------------------------------------------


def _softmax_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=integer, default=8, help="rows to stream")
    p.add_argument("--length", type=integer, default=129, help="elements per row (run time)")
    p.add_argument(
        "--data", choices=["random", "equal", "spike", "extreme", "increasing"], default="random"
    )
    _stall_args(p)


def _softmax_cases(cfg: Any, args: argparse.Namespace) -> list[Any]:
    from tessera.sim.softmax import SoftmaxCase

    if not 1 <= args.length <= cfg.max_len:
        raise ValueError(
            f"--length must be in [1, {cfg.max_len}] (the unit's max_len), got {args.length}; "
            "raise --max-len to buffer longer rows"
        )
    case = SoftmaxCase(
        args.rows,
        args.length,
        seed=args.seed,
        data=args.data,
        idle=args.idle,
        backpressure=args.backpressure,
    )
    return [case]


def _softmax_simulate(
    cfg: Any, cases: list[Any], args: argparse.Namespace
) -> tuple[list[Any], dict[str, Any]]:
    from tessera.sim.softmax import simulate_softmax

    return simulate_softmax(cfg, cases, sim=args.sim, waves=args.waves), {}


def _softmax_csim(cfg: Any, case: Any) -> tuple[Any, Any]:
    import numpy as np

    from tessera.hls.softmax import csim_softmax
    from tessera.models.softmax import softmax

    x = np.stack(case.logits(cfg))
    return csim_softmax(cfg, x), softmax(x, cfg)


ENGINES["softmax"] = EngineSpec(
    name="softmax",
    summary="OnlineSoftmax: single-pass running max/sum, base-2 exp LUT, one reciprocal per row",
    config="tessera.models.softmax:SoftmaxConfig",
    generate="tessera.rtl.softmax:generate_softmax",
    add_case_args=_softmax_case_args,
    make_cases=_softmax_cases,
    simulate=_softmax_simulate,
    csim=_softmax_csim,
)


# --- layernorm --------------------------------------------------------------------------------


def _layernorm_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=integer, default=8, help="rows of dim elements to stream")
    p.add_argument("--data", choices=["random", "extreme"], default="random")
    _stall_args(p)


def _layernorm_cases(cfg: Any, args: argparse.Namespace) -> list[Any]:
    from tessera.sim.layernorm import LayerNormCase

    return [
        LayerNormCase(
            args.rows,
            seed=args.seed,
            data=args.data,
            idle=args.idle,
            backpressure=args.backpressure,
        )
    ]


def _layernorm_simulate(
    cfg: Any, cases: list[Any], args: argparse.Namespace
) -> tuple[list[Any], dict[str, Any]]:
    from tessera.sim.layernorm import simulate_layernorm

    return simulate_layernorm(cfg, cases, sim=args.sim, waves=args.waves), {}


def _layernorm_csim(cfg: Any, case: Any) -> tuple[Any, Any]:
    from tessera.hls.layernorm import csim_layernorm
    from tessera.models.layernorm import layernorm

    x, gamma, beta = case.inputs(cfg)
    return csim_layernorm(cfg, x, gamma, beta), layernorm(x, gamma, beta, cfg)


ENGINES["layernorm"] = EngineSpec(
    name="layernorm",
    summary="LayerNorm: exact integer mean/variance, rsqrt by table + Newton, affine gamma/beta",
    config="tessera.models.layernorm:LayerNormConfig",
    generate="tessera.rtl.layernorm:generate_layernorm",
    add_case_args=_layernorm_case_args,
    make_cases=_layernorm_cases,
    simulate=_layernorm_simulate,
    csim=_layernorm_csim,
)


# --- attention --------------------------------------------------------------------------------


def _attention_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=integer, default=129, help="sequence length S (run time)")
    p.add_argument("--mask", choices=["none", "causal", "lambda"], default="none")
    p.add_argument("--sink", type=integer, default=0, help="Λ mask: initial tokens always seen")
    p.add_argument("--window", type=integer, default=0, help="Λ mask: recent tokens seen")
    p.add_argument("--data", choices=["random", "extreme", "equal"], default="random")
    _stall_args(p)


def _attention_cases(cfg: Any, args: argparse.Namespace) -> list[Any]:
    from tessera.models.attention import AttentionMask
    from tessera.sim.attention import AttentionCase

    cfg.check_seq_len(args.seq_len)
    mask = AttentionMask(args.mask, sink=args.sink, window=args.window)
    return [
        AttentionCase(
            args.seq_len,
            seed=args.seed,
            mask=mask,
            data=args.data,
            idle=args.idle,
            backpressure=args.backpressure,
        )
    ]


def _attention_simulate(
    cfg: Any, cases: list[Any], args: argparse.Namespace
) -> tuple[list[Any], dict[str, Any]]:
    from tessera.models.attention import attention_traffic
    from tessera.sim.attention import simulate_attention

    results = simulate_attention(cfg, cases, sim=args.sim, waves=args.waves)
    traffic = attention_traffic(args.seq_len, cfg)
    return results, {"model_cycles": traffic["cycles"], "traffic": traffic}


def _attention_csim(cfg: Any, case: Any) -> tuple[Any, Any]:
    from tessera.hls.attention import csim_attention
    from tessera.models.attention import attention

    q, k, v = case.operands(cfg)
    requant = case.score_requant(cfg)
    return (
        csim_attention(cfg, q, k, v, requant, case.mask),
        attention(q, k, v, cfg, requant, case.mask),
    )


ENGINES["attention"] = EngineSpec(
    name="attention",
    summary="AttentionEngine: P query rows on chip, K and V streamed once per group of P",
    config="tessera.models.attention:AttentionConfig",
    generate="tessera.rtl.attention:generate_attention",
    add_case_args=_attention_case_args,
    make_cases=_attention_cases,
    simulate=_attention_simulate,
    csim=_attention_csim,
)


# --- moe --------------------------------------------------------------------------------------


def _moe_case_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=integer, default=17, help="tokens in the layer call")
    p.add_argument("--task", type=integer, default=0, help="task whose gate routes the tokens")
    p.add_argument(
        "--skew",
        choices=["random", "one", "spread"],
        default="random",
        help="routing the data is built for: random, all tokens to one expert, every expert used",
    )
    p.add_argument("--expert", type=integer, default=0, help="--skew one: the favoured expert")
    p.add_argument(
        "--memory-stall",
        type=float,
        default=0.0,
        help="probability of a stall cycle on each of the DDR model's AR and R channels",
    )
    _stall_args(p)


def _moe_cases(cfg: Any, args: argparse.Namespace) -> list[Any]:
    from tessera.rtl.moe import check_engine_config
    from tessera.sim.moe import MoeCase

    check_engine_config(cfg)
    case = MoeCase(
        args.tokens,
        task=args.task,
        seed=args.seed,
        skew=args.skew,
        expert=args.expert,
        idle=args.idle,
        backpressure=args.backpressure,
        memory_stall=args.memory_stall,
    )
    case.inputs(cfg)  # rejects token counts, tasks and experts the config cannot run
    return [case]


def _moe_simulate(
    cfg: Any, cases: list[Any], args: argparse.Namespace
) -> tuple[list[Any], dict[str, Any]]:
    from tessera.estimators.moe_cycles import moe_engine_cycles
    from tessera.models.moe import moe_layer, moe_traffic
    from tessera.sim.moe import simulate_moe

    results = simulate_moe(cfg, cases, sim=args.sim, waves=args.waves)
    x, weights = cases[0].inputs(cfg)
    _, routing = moe_layer(x, weights, cases[0].task, cfg)
    model = moe_engine_cycles(routing, cfg)
    return results, {
        "model_cycles": model["cycles"],
        "cycle_breakdown": {k: v for k, v in model.items() if k != "per_expert"},
        "queue_lengths": [int(n) for n in routing.queue_lengths],
        "traffic": moe_traffic(routing, cfg),
    }


def _moe_generate(cfg: Any, out_dir: Any) -> dict[str, Any]:
    """``generate_moe`` for the command line: a config the engine cannot be built for (e.g.
    ``dim`` not a multiple of ``cols``) is a usage error (one line, exit status 2), like an
    invalid config field."""
    from tessera.rtl.moe import generate_moe

    try:
        return generate_moe(cfg, out_dir)
    except ValueError as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


ENGINES["moe"] = EngineSpec(
    name="moe",
    summary="MoeEngine: gate, top-k, per-expert queues, expert FFNs on one MAC array, AXI4 weights",
    config="tessera.models.moe:MoeConfig",
    generate="tessera.cli.engines:_moe_generate",
    add_case_args=_moe_case_args,
    make_cases=_moe_cases,
    simulate=_moe_simulate,
    csim=None,
)
