"""Import a plain torch module (an MLP, a transformer encoder block) as a host op graph.

:func:`import_torch` traces a module with :func:`torch.fx.symbolic_trace`, runs it over calibration
data with an :class:`torch.fx.Interpreter` to record every value's range and shape, and turns each
traced operation into an :class:`ImportedOp` with a float form (the torch operation itself) and a
bit-exact integer form made of tessera's golden units, so that
:class:`~tessera.host.session.Session` can place it on torch and FPGA devices like the built-in
M³ViT::

    imported = import_torch(model, calibration)
    with Session(imported, ["cpu", "fpga:emu"]) as session:
        y = session.run(x)

Integer forms
-------------
- ``nn.Linear``: int8 per-output-channel weights, int8 input, the golden GEMM
  (:func:`tessera.models.gemm.gemm`) with an int32 bias, one requantization per column straight
  into the output's format (the building blocks of :mod:`tessera.models.m3vit_quant`).
- ``matmul`` / ``bmm`` / ``@``: both operands int8 at their calibrated scales, the golden GEMM per
  matrix of the (broadcast) leading dimensions, one requantization of the int32 sums.
- ``nn.LayerNorm`` (last dimension): the golden LayerNorm on a 16-bit fixed-point input, its
  16-bit output requantized to the output's format.
- GELU (exact, ``approximate="none"``): the ROM unit :func:`tessera.models.gelu.gelu` on a 16-bit
  fixed-point input with ``in_frac`` chosen from the calibrated range (5..10 fraction bits).
- softmax over the last dimension: the online softmax unit :func:`tessera.models.softmax.softmax`
  on 16-bit fixed-point logits, probabilities with 15 fraction bits.
- ``a + b``: both operands rescaled to one 16-bit fixed-point format covering the operands and
  the sum, added, saturated.
- ``x * c``, ``x / c`` (a constant number ``c``): one requantization by ``|c|`` (and a negation).
- ReLU: ``max(q, 0)`` in the input's format (exact).
- view / reshape / flatten / unflatten / squeeze / unsqueeze / contiguous / permute / transpose /
  basic indexing (ints, slices, ``None``, ``...``), dropout and identity (inference): the same
  data movement on the raw integers; the output keeps the input's format.

Number formats
--------------
Every value has one :class:`~tessera.host.graph.QFormat` (symmetric, per tensor), chosen from its
calibrated largest magnitude ``r``:

- in the format its consumers read, when they all read the same one: int8 at ``r / 127`` for a
  GEMM operand (``act8``), 16-bit fixed point with ``frac`` fraction bits covering ``2 r`` for a
  LayerNorm or softmax input or a sum, the GELU unit's input format for a GELU input; the
  producer then requantizes straight into it (as the M³ViT's fc1 writes the GELU's format);
- otherwise (graph output, consumers that disagree or accept anything) 16 bits at
  ``r / 32767``.

Each op converts an input that is not in the format its unit reads with one requantization
(``multiplier / 2**shift``, round half away from zero, saturate), the same arithmetic as the GEMM
engine's output stage. Shape ops are transparent: the formats of their consumers decide the
format of the value they read. Values past the calibrated range saturate.

Cycle model (``fpga_cycles``)
-----------------------------
GEMMs, LayerNorm, GELU and softmax take the validated models of :mod:`tessera.estimators.cycles`
(``gemm_cycles`` per matrix, ``layernorm_cycles``, ``gelu_cycles``, ``softmax_cycles``). Ops
without an engine of their own -- ReLU, add, constant scaling, each input requantization, and
permute / transpose / indexing (a pass through a reorder buffer) -- are charged as a streaming
unit of :data:`STREAM_LANES` elements per cycle with a :data:`STREAM_LATENCY`-cycle pipeline. Pure
views (reshape, flatten, contiguous, squeeze, dropout, ...) only change how the next unit
addresses memory and cost 0 cycles. Units are charged as if they ran one after the other.

Assumptions
-----------
The module is batch-first: its one tensor input and every batch-dependent shape scale with
dimension 0 of the input; shapes are recorded at two batch sizes (the calibration batch and one
more), so ``view(B, T, H, D)`` with ``B = x.shape[0]`` works at any batch size. The module is put
in ``eval()`` mode. Anything else raises one ``ValueError`` naming the node and listing
:data:`SUPPORTED`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from tessera.estimators.cycles import gelu_cycles, gemm_cycles, layernorm_cycles, softmax_cycles
from tessera.host.device import FunctionOp
from tessera.host.graph import Graph, Node, QFormat
from tessera.models.gelu import GeluConfig, gelu
from tessera.models.gemm import GemmConfig, gemm
from tessera.models.layernorm import LayerNormConfig, quantize_params
from tessera.models.m3vit_quant import (
    ColumnRequant,
    QuantLayerNorm,
    frac_bits_for,
    quantize_linear,
    symmetric_scale,
)
from tessera.models.rounding import Rounding, saturate
from tessera.models.softmax import SoftmaxConfig, softmax

__all__ = [
    "STREAM_LANES",
    "STREAM_LATENCY",
    "SUPPORTED",
    "ImportedModel",
    "ImportedOp",
    "import_torch",
]

IntArray = npt.NDArray[np.int64]

#: Elements per cycle of the streaming unit that ops without an engine are charged on.
STREAM_LANES = 4
#: Pipeline depth, in cycles, of that streaming unit.
STREAM_LATENCY = 2

#: What :func:`import_torch` accepts (quoted in its errors).
SUPPORTED = (
    "nn.Linear; nn.ReLU / F.relu / torch.relu / .relu(); nn.GELU / F.gelu (approximate='none'); "
    "nn.LayerNorm over the last dimension; softmax over the last dimension (nn.Softmax, "
    "F.softmax, torch.softmax, .softmax()); tensor + tensor; matmul / bmm / @; multiplication "
    "or division by a constant number; view / reshape / flatten / unflatten / squeeze / "
    "unsqueeze / contiguous / permute / transpose / indexing with ints, slices, None or ...; "
    "nn.Flatten / nn.Unflatten / nn.Dropout / nn.Identity (inference)"
)

_OUT8, _WIDE = 8, 16  # GEMM operand width; width of every other value
_ROUNDING = Rounding.RND_INF

_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "contiguous"}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze}
_SHAPE_KINDS = {"reshape", "permute", "getitem"}


@dataclass(frozen=True)
class _Record:
    """What calibration saw of one tensor value."""

    max_abs: float
    shape: tuple[int, ...]  # at the calibration batch
    shape_next: tuple[int, ...]  # at one more


class ImportedOp(FunctionOp):
    """One traced operation: its float form, its bit-exact integer form and its cycle count.

    Parameters
    ----------
    name : str
        The fx node's name (unique in the graph).
    kind : str
        ``"linear"``, ``"matmul"``, ``"layernorm"``, ``"gelu"``, ``"softmax"``, ``"add"``,
        ``"scale"``, ``"relu"``, ``"reshape"``, ``"permute"`` or ``"getitem"``.
    run_int, cycles : callable
        Integer form and its engine cycles, both on raw integer inputs.
    run_float : callable
        ``run_float(module, *tensors)``; ``module`` is the op's submodule on the tensors' device
        (``None`` for functions and methods).
    module : nn.Module or None
        The submodule a ``call_module`` node runs.
    shapes : tuple
        Output shape at the calibration batch, at one more image, and that batch.
    params : dict
        The integer parameters and formats (e.g. ``weight``, ``bias``, ``in_format``), for
        inspection and independent checks.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        run_int: Callable[..., IntArray],
        run_float: Callable[..., torch.Tensor],
        cycles: Callable[..., int],
        module: nn.Module | None,
        shapes: tuple[tuple[int, ...], tuple[int, ...], int],
        params: dict[str, Any],
    ) -> None:
        at, nxt, b = shapes

        def out_shape(batch: int) -> tuple[int, ...]:
            # Batch-dependent dimensions grow linearly with the batch.
            return tuple(s + (n - s) * (batch - b) for s, n in zip(at, nxt, strict=True))

        super().__init__(name, kind, run_int, run_float, cycles, out_shape, module)
        self.params = params


@dataclass(eq=False)
class ImportedModel:
    """A torch module as an op graph, ready for :class:`~tessera.host.session.Session`.

    Attributes
    ----------
    module : nn.Module
        The float module (in eval mode).
    op_graph : Graph
        Its ops in execution order with the integer formats of their outputs.
    input_name, output_name : str
        The graph input (the module's argument) and the op whose value the module returns.
    input_shape : tuple of int
        Shape of one input without the batch dimension.
    gemm_cfg : GemmConfig
        The GEMM engine of the linear layers and matmuls.
    num_tasks : int
        Always 1: the task argument of a session does not apply.
    """

    module: nn.Module
    op_graph: Graph
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    gemm_cfg: GemmConfig
    num_tasks: int = field(default=1, init=False)

    @property
    def ops(self) -> dict[str, ImportedOp]:
        """Op name -> op."""
        return {n.name: n.op for n in self.op_graph.nodes}  # type: ignore[misc]

    def graph(self, task: int = 0) -> Graph:
        """The op graph (one graph: ``task`` must be 0)."""
        if task != 0:
            raise ValueError(f"an imported model has one task: task must be 0, got {task}")
        return self.op_graph

    def check_input(self, x: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float32]:
        """``x`` as a float32 array of shape ``(batch, *input_shape)``, or ``ValueError``."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        arr = np.asarray(x, dtype=np.float32)
        if (
            arr.ndim != len(self.input_shape) + 1
            or arr.shape[1:] != self.input_shape
            or not len(arr)
        ):
            dims = ", ".join(map(str, self.input_shape))
            raise ValueError(f"x must have shape (batch, {dims}) with batch >= 1, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("x must be finite (no NaN or infinity)")
        return arr

    def run_int(self, x: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float32]:
        """The whole graph in integer arithmetic on the host, dequantized: what a placement of
        every op on FPGA devices returns."""
        feed = self.check_input(x)
        graph = self.op_graph
        values: dict[str, IntArray] = {
            self.input_name: graph.formats[self.input_name].quantize(feed)
        }  # type: ignore[union-attr]
        for node in graph.nodes:
            values[node.name] = node.op.run_int(*(values[s] for s in node.inputs))
        return graph.formats[self.output_name].dequantize(values[self.output_name])  # type: ignore[union-attr]


# --- helpers -------------------------------------------------------------------------------
def _act8(r: float) -> QFormat:
    return QFormat(symmetric_scale(r, _OUT8), _OUT8)


def _wide(r: float) -> QFormat:
    return QFormat(symmetric_scale(r, _WIDE), _WIDE)


def _fixed(r: float) -> QFormat:
    return QFormat(2.0 ** -frac_bits_for(r, _WIDE), _WIDE)


def _gelu_cfg(r: float) -> GeluConfig:
    # Default ROM unit; fewer fraction bits only when the range needs them (5 = the ROM step).
    return GeluConfig(in_bits=_WIDE, in_frac=min(10, max(5, frac_bits_for(r, _WIDE))))


def _stream(count: int) -> int:
    return -(-int(count) // STREAM_LANES) + STREAM_LATENCY


def _rescaler(src: QFormat, dst: QFormat, where: str) -> Callable[[IntArray], IntArray] | None:
    """Requantization from ``src`` to ``dst`` (``None`` when they are the same format)."""
    if src == dst:
        return None
    try:
        return ColumnRequant.of(src.scale / dst.scale, dst.bits)
    except ValueError as exc:
        raise ValueError(
            f"{where}: cannot requantize scale {src.scale:g} to {dst.scale:g}: {exc}"
        ) from None


def _apply(fn: Callable[[IntArray], IntArray] | None, x: IntArray) -> IntArray:
    return x if fn is None else fn(x)


def _pass_cycles(fn: Callable[[IntArray], IntArray] | None, x: IntArray) -> int:
    return 0 if fn is None else _stream(x.size)


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"module {type(gm.get_submodule(str(node.target))).__name__}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    if node.op == "get_attr":
        return f"attribute {node.target} used outside a supported module"
    return f"function {getattr(node.target, '__name__', node.target)}"


def _unsupported(node: fx.Node, gm: fx.GraphModule, why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(
        f"node {node.name!r} ({_describe(node, gm)}) is not supported{reason}; import_torch "
        f"supports: {SUPPORTED}"
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Calibration(fx.Interpreter):
    """Runs the traced module and keeps every node's output."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seen: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.seen[n] = out
        return out


def _calibrate(gm: fx.GraphModule, x: torch.Tensor) -> dict[fx.Node, Any]:
    interp = _Calibration(gm)
    with torch.no_grad():
        interp.run(x)
    return interp.seen


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. tensors inside a structure: treat as different
        return False


# --- the importer --------------------------------------------------------------------------
def import_torch(
    module: nn.Module,
    calibration: torch.Tensor | npt.ArrayLike,
    *,
    gemm_cfg: GemmConfig | None = None,
) -> ImportedModel:
    """Trace ``module`` and build its op graph with integer forms calibrated on ``calibration``.

    Parameters
    ----------
    module : nn.Module
        A batch-first module with one tensor input and one tensor output, made of the operations
        in :data:`SUPPORTED` (it is switched to ``eval()``).
    calibration : torch.Tensor or array_like
        Representative inputs ``(n, ...)``, ``n >= 1``: every value's format covers the largest
        magnitude it takes on them.
    gemm_cfg : GemmConfig, optional
        The GEMM engine (default: a 16 x 16 array, 32-bit accumulators, round half away from
        zero, as the M³ViT uses).

    Returns
    -------
    ImportedModel

    Raises
    ------
    ValueError
        If the module cannot be traced, has another input or output than one tensor, uses an
        unsupported operation (naming the node and listing what is supported), or the
        calibration data is empty or not finite.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(calibration, torch.Tensor):
        cal = calibration.detach().cpu().float()
    else:
        cal = torch.from_numpy(np.asarray(calibration, dtype=np.float32))
    if cal.ndim < 1 or len(cal) < 1:
        raise ValueError(
            f"calibration must hold at least one input (shape (n, ...)), got {tuple(cal.shape)}"
        )
    if not torch.isfinite(cal).all():
        raise ValueError("calibration must be finite (no NaN or infinity)")
    gemm_cfg = gemm_cfg or GemmConfig(rows=16, cols=16, acc_bits=32, out_bits=8, rounding=_ROUNDING)
    module.eval()
    try:
        gm = fx.symbolic_trace(module)
    except Exception as exc:
        raise ValueError(
            f"torch.fx could not trace {type(module).__name__} ({type(exc).__name__}: {exc}); "
            "import_torch needs a forward without data-dependent control flow"
        ) from None
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return _Importer(gm, module, cal, gemm_cfg).build()


class _Importer:
    def __init__(
        self, gm: fx.GraphModule, module: nn.Module, cal: torch.Tensor, gemm_cfg: GemmConfig
    ) -> None:
        self.gm, self.module, self.gemm_cfg = gm, module, gemm_cfg
        nodes = list(gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise ValueError(
                f"{type(module).__name__}.forward takes {len(inputs)} arguments; import_torch "
                "supports modules with exactly one tensor input"
            )
        self.input = inputs[0]
        self.output = next(n for n in nodes if n.op == "output")
        self.batch = len(cal)
        try:
            first = _calibrate(gm, cal)
            second = _calibrate(gm, torch.cat([cal, cal[:1]]))
        except Exception as exc:
            raise ValueError(
                f"running {type(module).__name__} on the calibration data failed "
                f"({type(exc).__name__}: {exc}); check its shape"
            ) from None
        result = self.output.args[0]
        if not isinstance(result, fx.Node) or not isinstance(first.get(result), torch.Tensor):
            raise ValueError(
                f"{type(module).__name__}.forward must return one tensor; import_torch supports "
                "single-output modules"
            )
        if result is self.input:
            raise ValueError(
                f"{type(module).__name__}.forward returns its input unchanged: nothing to import"
            )
        self.result = result
        self.static: dict[fx.Node, Any] = {}  # non-tensor values (shapes, sizes, constants)
        self.batch_dependent: set[fx.Node] = set()
        self.records: dict[fx.Node, _Record] = {}
        for n in nodes:
            if n.op == "output":
                continue
            value = first[n]
            if isinstance(value, torch.Tensor):
                if not value.is_floating_point():
                    raise _unsupported(
                        n, gm, f"it makes a {value.dtype} tensor; only float tensors are"
                    )
                self.records[n] = _Record(
                    float(value.detach().abs().max()) if value.numel() else 0.0,
                    tuple(value.shape),
                    tuple(second[n].shape),
                )
            else:
                self.static[n] = value
                if not _same(value, second[n]):
                    self.batch_dependent.add(n)
        self.kinds = {n: self._kind(n) for n in nodes if n in self.records and n is not self.input}

    # --- classification ------------------------------------------------------------------
    def _kind(self, n: fx.Node) -> str:
        gm, t = self.gm, n.target
        if n.op == "get_attr":
            raise _unsupported(
                n, gm, "parameters are supported only inside nn.Linear and nn.LayerNorm"
            )
        if n.op == "call_module":
            mod = gm.get_submodule(str(t))
            if isinstance(mod, nn.Linear):
                return "linear"
            if isinstance(mod, nn.ReLU):
                return "relu"
            if isinstance(mod, nn.GELU):
                if mod.approximate != "none":
                    raise _unsupported(
                        n, gm, f"approximate={mod.approximate!r}; the GELU unit is exact"
                    )
                return "gelu"
            if isinstance(mod, nn.LayerNorm):
                if len(mod.normalized_shape) != 1:
                    raise _unsupported(n, gm, "LayerNorm over more than the last dimension")
                return "layernorm"
            if isinstance(mod, nn.Softmax):
                self._check_last_dim(n, mod.dim)
                return "softmax"
            if isinstance(mod, nn.Dropout | nn.Identity | nn.Flatten | nn.Unflatten):
                return "reshape"
            raise _unsupported(n, gm)
        method = n.op == "call_method"
        if (method and t in _RESHAPE_METHODS) or (not method and t in _RESHAPE_FUNCTIONS):
            return "reshape"
        if (method and t in ("permute", "transpose")) or t in (torch.permute, torch.transpose):
            return "permute"
        if t is operator.getitem:
            return "getitem"
        if (method and t in ("matmul", "bmm")) or t in (operator.matmul, torch.matmul, torch.bmm):
            a, b = self._tensor_args(n)
            if len(a) != 2 or b:
                raise _unsupported(n, gm, "matmul of two tensors only")
            if min(len(self.records[x].shape) for x in a) < 2:
                raise _unsupported(n, gm, "both matmul operands need at least 2 dimensions")
            return "matmul"
        if (method and t == "relu") or t in (F.relu, torch.relu):
            return "relu"
        if t is F.gelu:
            if n.kwargs.get("approximate", "none") != "none":
                raise _unsupported(n, gm, "approximate='tanh'; the GELU unit is exact")
            return "gelu"
        if (method and t == "softmax") or t in (F.softmax, torch.softmax):
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            self._check_last_dim(n, self._resolve(dim))
            return "softmax"
        if (method and t == "add") or t in (operator.add, torch.add):
            tensors, others = self._tensor_args(n)
            if len(tensors) != 2 or others or "alpha" in n.kwargs:
                raise _unsupported(n, gm, "addition of two tensors only")
            return "add"
        if (method and t in ("mul", "div")) or t in (
            operator.mul,
            operator.truediv,
            torch.mul,
            torch.div,
        ):
            self._scalar(n)
            return "scale"
        raise _unsupported(n, gm)

    def _tensor_args(self, n: fx.Node) -> tuple[list[fx.Node], list[Any]]:
        tensors, others = [], []
        for a in [*n.args, *n.kwargs.values()]:
            (tensors if isinstance(a, fx.Node) and a in self.records else others).append(a)
        return tensors, others

    def _resolve(self, a: Any) -> Any:
        return self.static[a] if isinstance(a, fx.Node) and a in self.static else a

    def _check_last_dim(self, n: fx.Node, dim: Any) -> None:
        ndim = len(self.records[n].shape)
        if not isinstance(dim, int) or dim not in (-1, ndim - 1):
            raise _unsupported(n, self.gm, f"softmax over dim={dim!r}; only the last dimension is")

    def _scalar(self, n: fx.Node) -> float:
        """The constant a tensor is multiplied by (``1 / c`` for a division)."""
        tensors, others = self._tensor_args(n)
        divide = n.target in (operator.truediv, torch.div, "div")
        extra = {k: v for k, v in n.kwargs.items() if v is not None}
        values = [self._resolve(v) for v in others]
        if (
            len(tensors) != 1
            or len(values) != 1
            or extra
            or not _is_number(values[0])
            or any(isinstance(v, fx.Node) and v in self.batch_dependent for v in others)
            or (divide and n.args[0] is not tensors[0])
        ):
            what = (
                "a tensor divided by a constant number"
                if divide
                else "a tensor times a constant number"
            )
            raise _unsupported(n, self.gm, f"only {what} is")
        c = float(values[0])
        if c == 0 or not math.isfinite(c):
            raise _unsupported(n, self.gm, f"the constant {c} must be finite and non-zero")
        return 1.0 / c if divide else c

    # --- formats ---------------------------------------------------------------------------
    def _range(self, n: fx.Node) -> float:
        return self.records[n].max_abs

    def _reads(self, n: fx.Node) -> Iterator[tuple[fx.Node | None, fx.Node]]:
        """Consumers of ``n``'s value through shape ops: (op or None for the graph output, the
        value it reads)."""
        if n is self.result:
            yield None, n
        for user in n.users:
            if user not in self.kinds:
                continue
            if self.kinds[user] in _SHAPE_KINDS:
                yield from self._reads(user)
            else:
                yield user, n

    def _needs(self, op: fx.Node, value: fx.Node) -> QFormat | None:
        """The format ``op`` reads ``value`` in (None: any)."""
        kind, r = self.kinds[op], self._range(value)
        if kind in ("linear", "matmul"):
            return _act8(r)
        if kind in ("layernorm", "softmax"):
            return _fixed(r)
        if kind == "gelu":
            cfg = _gelu_cfg(r)
            return QFormat(2.0**-cfg.in_frac, cfg.in_bits)
        if kind == "add":
            return _fixed(max(self._range(a) for a in (*self._tensor_args(op)[0], op)))
        return None

    def _formats(self) -> dict[fx.Node, QFormat]:
        fmts: dict[fx.Node, QFormat] = {}
        for n in [self.input, *self.kinds]:
            if n is not self.input and self.kinds[n] in _SHAPE_KINDS:
                fmts[n] = fmts[self._tensor_args(n)[0][0]]
                continue
            needs = {self._needs(op, v) if op is not None else "output" for op, v in self._reads(n)}
            needs.discard(None)
            only = needs.pop() if len(needs) == 1 else None
            fmts[n] = only if isinstance(only, QFormat) else _wide(self._range(n))
        return fmts

    # --- ops ---------------------------------------------------------------------------------
    def build(self) -> ImportedModel:
        self.fmts = self._formats()
        nodes = []
        for n, kind in self.kinds.items():
            inputs = self._tensor_args(n)[0]
            unique = list(dict.fromkeys(inputs))
            if kind != "reshape":
                for a in [*n.args, *n.kwargs.values()]:
                    for s in _nodes_in(a):
                        if s in self.batch_dependent:
                            raise _unsupported(
                                n, self.gm, f"its argument {s.name!r} depends on the batch size"
                            )
            run_int, cycles, params = getattr(self, f"_{kind}")(n, unique)
            params.setdefault("out_format", self.fmts[n])
            rec = self.records[n]
            module = self.gm.get_submodule(str(n.target)) if n.op == "call_module" else None
            op = ImportedOp(
                n.name,
                kind,
                run_int,
                self._float_form(n, unique, kind),
                cycles,
                module,
                (rec.shape, rec.shape_next, self.batch),
                params,
            )
            nodes.append(Node(op, tuple(u.name for u in unique), self.fmts[n]))
        graph = Graph(nodes, {self.input.name: self.fmts[self.input]})
        if graph.outputs != [self.result.name]:
            raise ValueError(
                f"the graph's unread values are {graph.outputs}, expected only the result "
                f"{self.result.name!r}"
            )
        return ImportedModel(
            self.module, graph, self.input.name, self.result.name,
            self.records[self.input].shape[1:], self.gemm_cfg,
        )  # fmt: skip

    def _target_shape(self, n: fx.Node) -> tuple[int, ...]:
        rec = self.records[n]
        grows = [
            i for i, (a, b) in enumerate(zip(rec.shape, rec.shape_next, strict=True)) if a != b
        ]
        if len(grows) > 1:
            raise _unsupported(
                n, self.gm, "more than one of its output dimensions grows with the batch"
            )
        return tuple(-1 if i in grows else s for i, s in enumerate(rec.shape))

    def _float_form(self, n: fx.Node, inputs: list[fx.Node], kind: str) -> Callable[..., Any]:
        if kind == "reshape":
            shape = self._target_shape(n)
            return lambda _m, x: x.reshape(shape)
        static = self.static

        def call(module: nn.Module | None, *tensors: torch.Tensor) -> Any:
            env = dict(zip(inputs, tensors, strict=True))

            def sub(a: fx.Node) -> Any:
                return env[a] if a in env else static[a]

            args = fx.node.map_arg(n.args, sub)
            kwargs = fx.node.map_arg(n.kwargs, sub)
            if n.op == "call_module":
                assert module is not None
                return module(*args, **kwargs)
            if n.op == "call_method":
                return getattr(args[0], str(n.target))(*args[1:], **kwargs)
            return n.target(*args, **kwargs)  # type: ignore[operator]

        return call

    def _in(
        self, n: fx.Node, value: fx.Node, need: QFormat
    ) -> Callable[[IntArray], IntArray] | None:
        return _rescaler(self.fmts[value], need, f"node {n.name!r}")

    def _out(self, n: fx.Node, native: QFormat) -> Callable[[IntArray], IntArray] | None:
        return _rescaler(native, self.fmts[n], f"node {n.name!r}")

    def _linear(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        (x,) = inputs
        mod = self.gm.get_submodule(str(n.target))
        need, out = _act8(self._range(x)), self.fmts[n]
        pre = self._in(n, x, need)
        lin = quantize_linear(mod.weight, mod.bias, need.scale, out.scale, out.bits, _OUT8, True)
        cfg = self.gemm_cfg
        k, m = lin.w.shape

        def run(xr: IntArray) -> IntArray:
            x8 = _apply(pre, xr)
            return lin(x8.reshape(-1, k), cfg).reshape(*x8.shape[:-1], m)

        def cycles(xr: IntArray) -> int:
            return gemm_cycles(xr.size // k, m, k, cfg).cycles + _pass_cycles(pre, xr)

        return (
            run,
            cycles,
            {"weight": lin.w, "bias": lin.b, "weight_scale": lin.w_scale, "in_format": need},
        )

    def _matmul(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        a, b = self._tensor_args(n)[0]
        fa, fb = _act8(self._range(a)), _act8(self._range(b))
        pa, pb = self._in(n, a, fa), self._in(n, b, fb)
        out = self.fmts[n]
        requant = ColumnRequant.of(fa.scale * fb.scale / out.scale, out.bits)
        cfg = self.gemm_cfg
        order = [inputs.index(a), inputs.index(b)]  # inputs are deduplicated (x @ x)

        def operands(*raw: IntArray) -> tuple[IntArray, IntArray, tuple[int, ...]]:
            qa, qb = _apply(pa, raw[order[0]]), _apply(pb, raw[order[1]])
            lead = np.broadcast_shapes(qa.shape[:-2], qb.shape[:-2])
            return (
                np.broadcast_to(qa, lead + qa.shape[-2:]),
                np.broadcast_to(qb, lead + qb.shape[-2:]),
                lead,
            )

        def run(*raw: IntArray) -> IntArray:
            qa, qb, lead = operands(*raw)
            acc = np.empty((*lead, qa.shape[-2], qb.shape[-1]), dtype=np.int64)
            for idx in np.ndindex(*lead):
                acc[idx] = gemm(qa[idx], qb[idx], cfg)
            return requant(acc)

        def cycles(*raw: IntArray) -> int:
            qa, qb, lead = operands(*raw)
            (m, k), nn_ = qa.shape[-2:], qb.shape[-1]
            passes = _pass_cycles(pa, raw[order[0]]) + _pass_cycles(pb, raw[order[1]])
            return math.prod(lead) * gemm_cycles(m, nn_, k, cfg).cycles + passes

        return run, cycles, {"in_formats": (fa, fb), "requant": requant}

    def _layernorm(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        (x,) = inputs
        mod = self.gm.get_submodule(str(n.target))
        dim = int(mod.normalized_shape[0])
        need, out = _fixed(self._range(x)), self.fmts[n]
        pre = self._in(n, x, need)
        gamma = mod.weight.detach().double().numpy() if mod.weight is not None else np.ones(dim)
        beta = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(dim)
        pmax = float(max(np.abs(gamma).max(), np.abs(beta).max()))
        param_frac = min(11, frac_bits_for(pmax, 16, headroom=0))
        ln_cfg = LayerNormConfig(
            dim=dim,
            in_bits=_WIDE,
            in_frac=-round(math.log2(need.scale)),
            out_bits=_WIDE,
            out_frac=min(frac_bits_for(self._range(n), _WIDE), 14 + param_frac),
            param_bits=16,
            param_frac=param_frac,
            eps=float(mod.eps),
        )
        g, bq = quantize_params(gamma, beta, ln_cfg)
        norm = QuantLayerNorm(
            ln_cfg, g, bq, out.scale, ColumnRequant.of(2.0**-ln_cfg.out_frac / out.scale, out.bits)
        )

        def run(xr: IntArray) -> IntArray:
            return norm(_apply(pre, xr))

        def cycles(xr: IntArray) -> int:
            return layernorm_cycles(xr.size // dim, ln_cfg) + _pass_cycles(pre, xr)

        return run, cycles, {"layernorm": ln_cfg, "gamma": g, "beta": bq, "in_format": need}

    def _gelu(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        (x,) = inputs
        cfg = _gelu_cfg(self._range(x))
        native = QFormat(2.0**-cfg.in_frac, cfg.in_bits)
        pre, post = self._in(n, x, native), self._out(n, native)

        def run(xr: IntArray) -> IntArray:
            return _apply(post, gelu(_apply(pre, xr), cfg))

        def cycles(xr: IntArray) -> int:
            return (
                gelu_cycles(max(1, xr.size), cfg) + _pass_cycles(pre, xr) + _pass_cycles(post, xr)
            )

        return run, cycles, {"gelu": cfg, "in_format": native}

    def _softmax(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        (x,) = inputs
        need = _fixed(self._range(x))
        length = self.records[n].shape[-1]
        cfg = SoftmaxConfig(in_bits=_WIDE, in_frac=-round(math.log2(need.scale)), max_len=length)
        native = QFormat(2.0**-cfg.out_frac, cfg.out_bits + 1)  # unsigned probabilities
        pre, post = self._in(n, x, need), self._out(n, native)

        def run(xr: IntArray) -> IntArray:
            return _apply(post, softmax(_apply(pre, xr), cfg))

        def cycles(xr: IntArray) -> int:
            rows = xr.size // length
            extra = _pass_cycles(pre, xr) + _pass_cycles(post, xr)
            return softmax_cycles(max(1, rows), length, cfg) + extra

        return run, cycles, {"softmax": cfg, "in_format": need}

    def _add(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        a, b = self._tensor_args(n)[0]
        common = self._needs(n, a)
        assert common is not None
        pa, pb, post = self._in(n, a, common), self._in(n, b, common), self._out(n, common)
        order = [inputs.index(a), inputs.index(b)]

        def run(*raw: IntArray) -> IntArray:
            total = _apply(pa, raw[order[0]]) + _apply(pb, raw[order[1]])
            return _apply(post, saturate(total, common.bits, True))

        def cycles(*raw: IntArray) -> int:
            size = math.prod(np.broadcast_shapes(*(r.shape for r in raw)))
            extra = _pass_cycles(pa, raw[order[0]]) + _pass_cycles(pb, raw[order[1]])
            return _stream(size) + extra + (0 if post is None else _stream(size))

        return run, cycles, {"in_format": common}

    def _scale(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        (x,) = inputs
        c = self._scalar(n)
        fx_, out = self.fmts[x], self.fmts[n]
        # y = c * q * s_in = q_out * s_out: one requantization by |c| s_in / s_out, sign first.
        requant = _rescaler(QFormat(fx_.scale * abs(c), fx_.bits), out, f"node {n.name!r}")
        sign = -1 if c < 0 else 1

        def run(xr: IntArray) -> IntArray:
            return _apply(requant, sign * xr)

        return run, lambda xr: _stream(xr.size), {"factor": c}

    def _relu(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        (x,) = inputs
        post = self._out(n, self.fmts[x])

        def run(xr: IntArray) -> IntArray:
            return _apply(post, np.maximum(xr, 0))

        return run, lambda xr: _stream(xr.size), {}

    def _reshape(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        shape = self._target_shape(n)
        return lambda xr: np.reshape(xr, shape), lambda xr: 0, {}

    def _data_movement(self, n: fx.Node, inputs: list[fx.Node]) -> tuple[Any, Any, dict[str, Any]]:
        # The torch operation itself on the raw integers: pure data movement, so exact.
        call = self._float_form(n, inputs, self.kinds[n])

        def run(*raw: IntArray) -> IntArray:
            out = call(None, *(torch.from_numpy(np.ascontiguousarray(r)) for r in raw))
            return out.contiguous().numpy().copy()

        return run, lambda *raw: _stream(raw[0].size), {}

    _permute = _data_movement
    _getitem = _data_movement


def _nodes_in(a: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(a, lambda s: found.append(s) or s)
    return found
