"""One encoder block of the quantized M³ViT with every arithmetic operation on RTL.

:func:`simulate_encoder_layer` builds one simulation top, :class:`EncoderDatapath`, holding the
units a block needs (two ``LayerNorm``, an ``Epilogue`` that requantizes their int16 outputs to
int8, three ``LinearUnit`` variants and an ``AttentionEngine``), and a *program*: the block's
operations in order, each naming its unit, its input tensors and its parameters. The cocotb
testbench (:mod:`tessera.sim.encoder_testbench`) executes the program on the RTL; the host side
only moves data (packs rows into beats, splits heads into column slices, joins them). The same
program runs on the golden units here (:func:`run_program_golden`), which gives every operation
its expected output; the block's result is also compared with
:meth:`~tessera.models.m3vit_quant.QuantM3ViT.per_layer_outputs` (``block{i}.attn`` and
``block{i}.out``).

Program of a dense-MLP block (``x`` is the int16 residual stream, T tokens x D)::

    norm1       LayerNorm(x)                      -> int16     unit ln1
    norm1.rq    requant to int8                    -> h         unit ln_requant (Epilogue)
    q, k, v     h @ W + b, per-column requant      -> int8      unit qkv (LinearUnit)
    attn.h<i>   attention of head i (column slice) -> int8      unit attn (AttentionEngine)
    out         mixed @ Wo + b, requant + x        -> x_attn    unit residual (LinearUnit)
    norm2, norm2.rq                                -> h2
    fc1         h2 @ W1 + b1, requant, GELU, requant -> hidden  unit fc1 (LinearUnit)
    fc2         hidden @ W2 + b2, requant + x_attn -> x_out     unit residual

The MLP part is built by :func:`dense_mlp_program`. A block with an MoE layer runs only its
attention half here, followed by ``norm2`` and ``norm2.rq`` (the int8 tokens the MoE layer
routes): the layer itself runs on ``MoeEngine`` (:func:`tessera.sim.m3vit.simulate_m3vit` chains
the two). The patch embedding (:func:`embed_program`) and the final norm in front of the task
head (:func:`head_program`) are programs for the same datapath.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from tessera.models.attention import AttentionConfig, attention
from tessera.models.epilogue import EpilogueConfig, EpilogueParams, epilogue
from tessera.models.gemm import GemmConfig, gemm
from tessera.models.layernorm import LayerNormConfig, layernorm
from tessera.rtl.attention import AttentionEngine
from tessera.rtl.epilogue import Epilogue
from tessera.rtl.layernorm import LayerNorm
from tessera.rtl.linear import LinearConfigs, LinearUnit
from tessera.sim.epilogue import params_arrays, params_from_arrays
from tessera.sim.harness import default_build_root, run_dir, run_testbench

__all__ = [
    "EncoderDatapath",
    "EncoderDesign",
    "EncoderLayerResult",
    "EncoderOp",
    "OpResult",
    "block_program",
    "datapath_verilog",
    "dense_mlp_program",
    "embed_design",
    "embed_program",
    "encoder_design",
    "first_difference",
    "head_design",
    "head_program",
    "run_program_golden",
    "run_program_rtl",
    "simulate_encoder_layer",
]

TOP_NAME = "encoder_datapath"
TESTBENCH_MODULE = "tessera.sim.encoder_testbench"
Simulator = Literal["icarus", "verilator"]


# --- the hardware ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderDesign:
    """Configurations of the units of :class:`EncoderDatapath`, by unit name.

    The unit names below are those of :func:`encoder_design`; :func:`embed_design` (one linear
    unit ``patch``) and :func:`head_design` (``ln1``, ``ln_requant``) hold fewer.

    Attributes
    ----------
    layernorm : dict of str to LayerNormConfig
        ``ln1``, ``ln2``.
    epilogue : dict of str to EpilogueConfig
        ``ln_requant``: the stand-alone epilogue after the norms.
    linear : dict of str to LinearConfigs
        ``qkv``, ``residual``, ``fc1``.
    attention : dict of str to AttentionConfig
        ``attn``.
    """

    layernorm: dict[str, LayerNormConfig]
    epilogue: dict[str, EpilogueConfig]
    linear: dict[str, LinearConfigs]
    attention: dict[str, AttentionConfig]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: ``{kind: {unit: config dict}}``."""
        return {
            kind: {name: cfg.to_dict() for name, cfg in getattr(self, kind).items()}
            for kind in ("layernorm", "epilogue", "linear", "attention")
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderDesign:
        """Inverse of :meth:`to_dict`."""
        kinds = {
            "layernorm": LayerNormConfig,
            "epilogue": EpilogueConfig,
            "linear": LinearConfigs,
            "attention": AttentionConfig,
        }
        return cls(
            **{
                kind: {name: kinds[kind].from_dict(d) for name, d in data[kind].items()}
                for kind in kinds
            }
        )

    @property
    def short_name(self) -> str:
        """``encoder_<10 hex digits>`` of the whole design."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"encoder_{hashlib.sha256(blob).hexdigest()[:10]}"

    def units(self) -> dict[str, wiring.Component]:
        """Fresh components, by unit name."""
        out: dict[str, wiring.Component] = {}
        for name, cfg in self.layernorm.items():
            out[name] = LayerNorm(cfg)
        for name, cfg in self.epilogue.items():
            out[name] = Epilogue(cfg)
        for name, pair in self.linear.items():
            out[name] = LinearUnit(pair.gemm, pair.epi)
        for name, cfg in self.attention.items():
            out[name] = AttentionEngine(cfg)
        return out


class EncoderDatapath(wiring.Component):
    """Simulation top: independent units side by side, each port exposed as
    ``<unit>_<port>`` (e.g. ``qkv_a__tdata``, ``attn_csr__awaddr``).

    Parameters
    ----------
    units : dict of str to wiring.Component
        The units by name; every member of each unit's signature becomes a top-level member
        with the same flow and shape (see the units' own documentation for the widths).
    """

    def __init__(self, units: dict[str, wiring.Component]) -> None:
        self.units = units
        members = {
            f"{prefix}_{name}": member
            for prefix, unit in units.items()
            for name, member in unit.signature.members.items()
        }
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for prefix, unit in self.units.items():
            m.submodules[prefix] = unit
            for name, member in unit.signature.members.items():
                outer, inner = getattr(self, f"{prefix}_{name}"), getattr(unit, name)
                if member.is_port:
                    m.d.comb += inner.eq(outer) if member.flow is In else outer.eq(inner)
                elif member.flow is In:
                    wiring.connect(m, wiring.flipped(outer), inner)
                else:
                    wiring.connect(m, inner, wiring.flipped(outer))
        return m


_VERILOG: dict[str, str] = {}


def datapath_verilog(design: EncoderDesign) -> str:
    """Verilog of the :class:`EncoderDatapath` of ``design`` (converted once per process)."""
    if design.short_name not in _VERILOG:
        top = EncoderDatapath(design.units())
        _VERILOG[design.short_name] = verilog.convert(top, name=TOP_NAME, emit_src=False)
    return _VERILOG[design.short_name]


# --- the program -------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderOp:
    """One operation of a block program.

    Attributes
    ----------
    name : str
        Label, also the name of its output tensor.
    kind : {"layernorm", "epilogue", "linear", "attention", "concat"}
        What runs (``concat`` is host data movement: joins column blocks).
    unit : str
        The datapath unit ("" for ``concat``).
    inputs : tuple of str
        Input tensor names: ``(x,)``, ``(acc,)``, ``(a,)`` or ``(a, residual)``, ``(q, k, v)``,
        or the blocks to join.
    settings : dict
        Scalars: ``columns`` (the head's column slice) and the score ``multiplier``/``shift``
        for attention. Arrays (weights, biases...) live in the data file under ``<name>.<key>``.
    """

    name: str
    kind: str
    unit: str
    inputs: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "inputs": list(self.inputs)}


def _linear_arrays(name: str, lin: Any, gelu_requant: Any = None) -> dict[str, np.ndarray]:
    """Weight and epilogue parameters of a quantized linear layer (``QuantM3ViT``'s ``_Linear``)."""
    gelu = (0, 0)
    if gelu_requant is not None:
        gelu = (int(gelu_requant.multiplier[0]), int(gelu_requant.shift[0]))
    params = EpilogueParams(
        lin.b,
        lin.requant.multiplier,
        lin.requant.shift,
        gelu_multiplier=gelu[0],
        gelu_shift=gelu[1],
    )
    arrays = {f"{name}.w": lin.w}
    arrays.update({f"{name}.{k}": v for k, v in params_arrays(params).items()})
    return arrays


def _norm_ops(name: str, norm: Any, unit: str, x: str, d: int) -> tuple[list[EncoderOp], dict]:
    """LayerNorm on ``unit`` then its int8 requantization on the stand-alone epilogue."""
    rq = EpilogueParams.per_tensor(d, int(norm.requant.multiplier[0]), int(norm.requant.shift[0]))
    arrays = {f"{name}.gamma": norm.gamma, f"{name}.beta": norm.beta}
    arrays.update({f"{name}.rq.{k}": v for k, v in params_arrays(rq).items()})
    ops = [
        EncoderOp(name, "layernorm", unit, (x,)),
        EncoderOp(f"{name}.rq", "epilogue", "ln_requant", (name,)),
    ]
    return ops, arrays


def dense_mlp_program(block: Any, x: str, d: int) -> tuple[list[EncoderOp], dict, str]:
    """The MLP half of a dense block on the residual tensor ``x``: norm2, requant, fc1 (+ GELU,
    + hidden requant), fc2 (+ residual). Returns the ops, their arrays and the output's name."""
    ops, arrays = _norm_ops("norm2", block.norm2, "ln2", x, d)
    ops += [
        EncoderOp("fc1", "linear", "fc1", ("norm2.rq",)),
        EncoderOp("fc2", "linear", "residual", ("fc1", x)),
    ]
    arrays.update(_linear_arrays("fc1", block.fc1, block.hidden_requant))
    arrays.update(_linear_arrays("fc2", block.fc2))
    return ops, arrays, "fc2"


def block_program(qmodel: Any, block: int) -> tuple[list[EncoderOp], dict[str, np.ndarray]]:
    """Program and arrays of encoder block ``block`` of a ``QuantM3ViT`` (input tensor ``x``).

    A dense block's program ends with ``fc2`` (the block output). An MoE block's ends with
    ``norm2.rq``, the int8 tokens its MoE layer routes; ``out`` is the attention half's output
    (the residual the MoE output is added to).

    Raises
    ------
    ValueError
        ``block`` out of range, or a block with neither a dense MLP nor an MoE layer.
    """
    depth = len(qmodel.blocks)
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < depth:
        raise ValueError(f"block must be an integer in [0, {depth - 1}], got {block!r}")
    blk = qmodel.blocks[block]
    dense = blk.fc1 is not None and blk.fc2 is not None and blk.hidden_requant is not None
    if blk.moe is None and not dense:
        raise ValueError(
            f"block {block} has neither a complete dense MLP (fc1, GELU requant, fc2) nor an MoE "
            "layer; quantize the network with quantize_m3vit"
        )
    cfg = qmodel.cfg
    d, hd = cfg.embed_dim, cfg.head_dim
    ops, arrays = _norm_ops("norm1", blk.norm1, "ln1", "x", d)
    for p in ("q", "k", "v"):
        ops.append(EncoderOp(p, "linear", "qkv", ("norm1.rq",)))
        arrays.update(_linear_arrays(p, getattr(blk, p)))
    rq = blk.score_requant
    heads = []
    for h in range(cfg.num_heads):
        settings = {"columns": [h * hd, (h + 1) * hd], "multiplier": rq.multiplier}
        settings["shift"] = rq.shift
        ops.append(EncoderOp(f"attn.h{h}", "attention", "attn", ("q", "k", "v"), settings))
        heads.append(f"attn.h{h}")
    ops.append(EncoderOp("mixed", "concat", "", tuple(heads)))
    ops.append(EncoderOp("out", "linear", "residual", ("mixed", "x")))
    arrays.update(_linear_arrays("out", blk.out))
    if blk.moe is not None:
        # The MoE layer's input: norm2 and its int8 requantization (the layer is MoeEngine's).
        mlp_ops, mlp_arrays = _norm_ops("norm2", blk.norm2, "ln2", "out", d)
    else:
        mlp_ops, mlp_arrays, _ = dense_mlp_program(blk, "out", d)
    return ops + mlp_ops, {**arrays, **mlp_arrays}


def embed_program(qmodel: Any) -> tuple[list[EncoderOp], dict[str, np.ndarray]]:
    """The patch embedding's GEMM, bias and requantization into the residual format, on the
    ``patch`` linear unit of :func:`embed_design`. Input ``x`` is the ``(patches, C * p * p)``
    int8 pixel matrix; the output ``patch`` still lacks the position embeddings (an elementwise
    add the datapath has no free-standing unit for) and the cls row (a constant)."""
    return [EncoderOp("patch", "linear", "patch", ("x",))], _linear_arrays("patch", qmodel.patch)


def embed_design(qmodel: Any, gemm_cfg: GemmConfig) -> EncoderDesign:
    """The unit of :func:`embed_program`: a linear unit with ``residual_bits`` outputs."""
    out_bits = qmodel.patch.requant.bits
    epi = EpilogueConfig.for_gemm(
        gemm_cfg, bias_overflow="SAT", max_cols=qmodel.cfg.embed_dim, out_bits=out_bits
    )
    return EncoderDesign(
        layernorm={}, epilogue={}, linear={"patch": LinearConfigs(gemm_cfg, epi)}, attention={}
    )


def head_program(qmodel: Any) -> tuple[list[EncoderOp], dict[str, np.ndarray]]:
    """The final LayerNorm and its int8 requantization on the cls token (input ``x``, one row),
    on the units of :func:`head_design`. Its output ``norm.rq`` feeds the task head."""
    return _norm_ops("norm", qmodel.norm, "ln1", "x", qmodel.cfg.embed_dim)


def _ln_requant(ln_cfg: LayerNormConfig, gemm_cfg: GemmConfig, d: int, bits: int) -> EpilogueConfig:
    """The stand-alone epilogue that requantizes a LayerNorm's rows to ``bits``."""
    return EpilogueConfig(
        rows=1,
        cols=gemm_cfg.cols,
        max_cols=d,
        acc_bits=max(16, ln_cfg.out_bits),
        bias=False,
        out_bits=bits,
        rounding=gemm_cfg.rounding,
        overflow=gemm_cfg.overflow,
    )


def head_design(qmodel: Any, gemm_cfg: GemmConfig) -> EncoderDesign:
    """The units of :func:`head_program`: a LayerNorm of the final norm's format and the
    requantization epilogue."""
    ln_cfg = qmodel.norm.cfg
    rq = _ln_requant(ln_cfg, gemm_cfg, qmodel.cfg.embed_dim, qmodel.norm.requant.bits)
    return EncoderDesign(
        layernorm={"ln1": ln_cfg}, epilogue={"ln_requant": rq}, linear={}, attention={}
    )


def encoder_design(qmodel: Any, block: int, gemm_cfg: GemmConfig) -> EncoderDesign:
    """The units block ``block`` of ``qmodel`` runs on, with ``gemm_cfg``'s MAC array."""
    blk = qmodel.blocks[block]
    pre, cfg = qmodel.preset, qmodel.cfg
    d = cfg.embed_dim
    ln_cfg = blk.norm1.cfg

    def linear(**fields: Any) -> LinearConfigs:
        epi = EpilogueConfig.for_gemm(gemm_cfg, bias_overflow="SAT", **fields)
        return LinearConfigs(gemm_cfg, epi)

    return EncoderDesign(
        layernorm={"ln1": blk.norm1.cfg, "ln2": blk.norm2.cfg},
        epilogue={"ln_requant": _ln_requant(ln_cfg, gemm_cfg, d, pre.act_bits)},
        linear={
            "qkv": linear(max_cols=d, out_bits=pre.act_bits),
            "residual": linear(
                max_cols=d, out_bits=pre.residual_bits, residual=True, res_bits=pre.residual_bits
            ),
            "fc1": linear(
                max_cols=cfg.mlp_hidden,
                out_bits=qmodel.moe_cfg.gelu_bits,
                gelu=qmodel.moe_cfg.gelu,
                act_bits=pre.act_bits,
            ),
        },
        attention={"attn": qmodel.attn_cfg},
    )


# --- golden execution --------------------------------------------------------------------------
def run_program_golden(
    program: list[EncoderOp],
    arrays: dict[str, np.ndarray],
    design: EncoderDesign,
    x: npt.ArrayLike,
) -> dict[str, np.ndarray]:
    """Every tensor of ``program`` on the golden units, by name (``"x"`` is the block input)."""
    from tessera.models.gemm import Requant

    t: dict[str, np.ndarray] = {"x": np.asarray(x, dtype=np.int64)}
    for op in program:
        ins = [t[name] for name in op.inputs]
        if op.kind == "layernorm":
            cfg = design.layernorm[op.unit]
            t[op.name] = layernorm(
                ins[0], arrays[f"{op.name}.gamma"], arrays[f"{op.name}.beta"], cfg
            )
        elif op.kind == "epilogue":
            t[op.name] = epilogue(
                ins[0], params_from_arrays(arrays, f"{op.name}."), design.epilogue[op.unit]
            )
        elif op.kind == "linear":
            pair = design.linear[op.unit]
            acc = gemm(ins[0], arrays[f"{op.name}.w"], pair.gemm)
            res = ins[1] if len(ins) > 1 else None
            t[op.name] = epilogue(acc, params_from_arrays(arrays, f"{op.name}."), pair.epi, res)
        elif op.kind == "attention":
            lo, hi = op.settings["columns"]
            q, k, v = (a[None, :, lo:hi] for a in ins)
            rq = Requant(op.settings["multiplier"], op.settings["shift"])
            t[op.name] = attention(q, k, v, design.attention[op.unit], rq)[0]
        elif op.kind == "concat":
            t[op.name] = np.concatenate(ins, axis=1)
        else:
            raise ValueError(f"unknown op kind {op.kind!r}")
    return t


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpResult:
    """One operation on the RTL.

    Attributes
    ----------
    name, kind, unit : str
        As in :class:`EncoderOp`.
    passed : bool
        The RTL output equals the golden output bit for bit.
    message : str
        ``"ok"`` or the first mismatch.
    mismatch : dict or None
        ``{"tensor", "token", "column", "expected", "received"}``.
    cycles : int
        Clock cycles from starting the operation to its last output beat (measured).
    engine_cycles : int or None
        The engine's ``CYCLES`` register (GEMM or attention), where it has one.
    """

    name: str
    kind: str
    unit: str
    passed: bool
    message: str
    mismatch: dict[str, Any] | None
    cycles: int
    engine_cycles: int | None


@dataclass(frozen=True)
class EncoderLayerResult:
    """Outcome of :func:`simulate_encoder_layer`.

    Attributes
    ----------
    block : int
        Encoder block index.
    passed : bool
        Every operation and both trace checks passed.
    ops : tuple of OpResult
        Per RTL operation, in program order.
    trace_checks : dict of str to bool
        RTL result equals ``per_layer_outputs`` at ``block{i}.attn`` and ``block{i}.out``.
    first_mismatch : dict or None
        The first mismatch of the run (``tensor``, ``token``, ``column``, ``expected``,
        ``received``).
    cycles : int
        Sum of the operations' cycles.
    simulator : str
    sim_seconds : float
        Wall time of the simulator run (build excluded when cached).
    outputs : dict of str to ndarray
        The RTL's tensors by name.
    """

    block: int
    passed: bool
    ops: tuple[OpResult, ...]
    trace_checks: dict[str, bool]
    first_mismatch: dict[str, Any] | None
    cycles: int
    simulator: str
    sim_seconds: float
    outputs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    def cycles_by_op(self) -> dict[str, int]:
        """``{op name: cycles}``."""
        return {op.name: op.cycles for op in self.ops}


def first_difference(name: str, got: np.ndarray, want: np.ndarray) -> dict[str, Any] | None:
    if got.shape != want.shape:
        return {"tensor": name, "token": None, "column": None, "expected": list(want.shape),
                "received": list(got.shape)}  # fmt: skip
    bad = np.argwhere(got != want)
    if not len(bad):
        return None
    token, column = (int(i) for i in bad[0])
    return {
        "tensor": name,
        "token": token,
        "column": column,
        "expected": int(want[token, column]),
        "received": int(got[token, column]),
    }


def run_program_rtl(
    design: EncoderDesign,
    program: list[EncoderOp],
    arrays: dict[str, np.ndarray],
    x: npt.ArrayLike,
    *,
    sim: Simulator = "verilator",
    golden: dict[str, np.ndarray] | None = None,
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> tuple[tuple[OpResult, ...], dict[str, np.ndarray], float]:
    """Execute ``program`` on the :class:`EncoderDatapath` of ``design``, every op checked bit
    for bit against its golden output.

    Parameters
    ----------
    design : EncoderDesign
        The units.
    program : list of EncoderOp
        The ops; ``x`` is the input tensor.
    arrays : dict of str to ndarray
        The ops' weights and parameters.
    x : array_like of int
        The program's input.
    sim : {"icarus", "verilator"}
        Simulator.
    golden : dict of str to ndarray, optional
        :func:`run_program_golden` of the same program and input, if already computed.
    idle, backpressure, seed, waves
        As for :func:`simulate_encoder_layer`.
    build_dir : path, optional
        Defaults to ``<build root>/sim/<design name>/<sim>``.

    Returns
    -------
    ops : tuple of OpResult
        One per op that ran (not ``concat``); a failing op stops the run.
    outputs : dict of str to ndarray
        The RTL's tensors by name.
    seconds : float
        Wall time of the simulator run.
    """
    for name, value in (("idle", idle), ("backpressure", backpressure)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    x = np.asarray(x, dtype=np.int64)
    if golden is None:
        golden = run_program_golden(program, arrays, design, x)
    root = Path(build_dir) if build_dir else default_build_root() / "sim" / design.short_name / sim
    data_dir = run_dir(root, "data")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_path = data_dir / "block.npz"
    expected = {f"expected.{op.name}": golden[op.name] for op in program}
    np.savez(data_path, x=x, **arrays, **expected)
    job = {
        "design": design.to_dict(),
        "program": [op.to_dict() for op in program],
        "data": str(data_path),
        "idle": idle,
        "backpressure": backpressure,
        "seed": seed,
    }
    results, seconds, _ = run_testbench(
        verilog=datapath_verilog(design),
        top=TOP_NAME,
        testbench=TESTBENCH_MODULE,
        job=job,
        sim=sim,
        build_dir=root,
        waves=waves,
    )
    outputs = dict(np.load(run_dir(root, "job") / "outputs.npz"))
    return tuple(OpResult(**r) for r in results), outputs, seconds


def simulate_encoder_layer(
    qmodel: Any,
    image: Any,
    block: int = 0,
    task: int = 0,
    *,
    sim: Simulator = "verilator",
    gemm_cfg: GemmConfig | None = None,
    idle: float = 0.0,
    backpressure: float = 0.0,
    seed: int = 0,
    build_dir: str | os.PathLike | None = None,
    waves: bool = False,
) -> EncoderLayerResult:
    """Run encoder block ``block`` of ``qmodel`` on one image with every arithmetic op on RTL.

    The block's input is the golden trace's; :func:`tessera.sim.m3vit.simulate_m3vit` chains
    every block (MoE blocks included) on the RTL's own outputs instead.

    Parameters
    ----------
    qmodel : QuantM3ViT
        The quantized network.
    image : torch.Tensor or array_like
        One float image ``(C, H, W)`` (or a batch of one).
    block : int
        Encoder block with a dense MLP.
    task : int
        Task (the encoder does not depend on it; it selects the golden trace).
    sim : {"icarus", "verilator"}
        Simulator.
    gemm_cfg : GemmConfig, optional
        MAC array of the linear units; default ``qmodel.gemm_cfg`` with a 4 x 4 array (the
        results do not depend on the array shape, the cycles do).
    idle, backpressure : float
        Probabilities of an idle cycle on every input stream and of ``tready`` low on every
        output stream (0 for cycle counts without stalls).
    seed : int
        Seeds the stall patterns.
    build_dir : path, optional
        Defaults to ``<build root>/sim/<design name>/<sim>``.
    waves : bool
        Dump waveforms.

    Returns
    -------
    EncoderLayerResult

    Raises
    ------
    ValueError
        Bad block, task, image shape, or a block with an MoE layer (its MoE layer needs the MoE
        engine: use ``simulate_m3vit``).
    """
    program, arrays = block_program(qmodel, block)
    if qmodel.blocks[block].moe is not None:
        raise ValueError(
            f"block {block} has an MoE layer, which runs on the MoE engine: simulate_m3vit runs "
            "it with its attention half; simulate_encoder_layer takes dense-MLP blocks "
            f"({[i for i, b in enumerate(qmodel.blocks) if b.moe is None]})"
        )
    for name, value in (("idle", idle), ("backpressure", backpressure)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    images = np.asarray(image.detach() if hasattr(image, "detach") else image, dtype=np.float64)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[0] != 1:
        raise ValueError(f"image must be one (C, H, W) image or a batch of one, got {images.shape}")
    trace = qmodel.per_layer_outputs(images, task)
    x = trace["embed" if block == 0 else f"block{block - 1}.out"][0]
    gemm_cfg = gemm_cfg or dataclasses.replace(qmodel.gemm_cfg, rows=4, cols=4)
    design = encoder_design(qmodel, block, gemm_cfg)
    golden = run_program_golden(program, arrays, design, x)
    # The program must be the quantized network's own block.
    for key, name in ((f"block{block}.attn", "out"), (f"block{block}.out", program[-1].name)):
        if not np.array_equal(golden[name], trace[key][0]):
            raise RuntimeError(f"the block program disagrees with QuantM3ViT at {key}")

    root = Path(build_dir) if build_dir else None
    ops, outputs, seconds = run_program_rtl(
        design,
        program,
        arrays,
        x,
        sim=sim,
        golden=golden,
        idle=idle,
        backpressure=backpressure,
        seed=seed,
        build_dir=root,
        waves=waves,
    )
    checks = {}
    first = next((op.mismatch for op in ops if op.mismatch is not None), None)
    for key, name in ((f"block{block}.attn", "out"), (f"block{block}.out", program[-1].name)):
        got = outputs.get(name)
        diff = (
            {"tensor": name, "token": None, "column": None, "expected": "output", "received": None}
            if got is None
            else first_difference(name, got, trace[key][0])
        )
        checks[key] = diff is None
        first = first or diff
    ran_all = len(ops) == sum(op.kind != "concat" for op in program)
    return EncoderLayerResult(
        block=block,
        passed=ran_all and all(op.passed for op in ops) and all(checks.values()),
        ops=ops,
        trace_checks=checks,
        first_mismatch=first,
        cycles=sum(op.cycles for op in ops),
        simulator=sim,
        sim_seconds=seconds,
        outputs=outputs,
    )
