"""The softmax engine in HLS: ``include/tessera/softmax.h`` instantiated from a
:class:`~tessera.models.softmax.SoftmaxConfig`.

This module is the softmax entry of the HLS engine registry (:data:`ENGINE`) and converts between
rows of logits and the engine's streams with the RTL's own byte layout
(:func:`~tessera.sim.softmax.pack_logits`, :func:`~tessera.sim.softmax.unpack_probabilities`), so
the same vectors drive the golden model, the RTL and the C-simulation.

The exponential table reaches the kernel as ``CONFIG_T`` members ``exp2_000`` ... (one per entry
of :func:`~tessera.models.softmax.exp2_lut`, hexadecimal index), which ``include/tessera/exp.h``
gathers into a ROM; :func:`exp_constants` gives every member ``exp.h`` reads, for any kernel with
a softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tessera.hls.engine import (
    ConfigConstant,
    HlsEngine,
    KernelInterface,
    OutputBeats,
    ScalarArg,
    StreamCase,
    StreamPort,
)
from tessera.models.softmax import (
    LOG2E,
    LOG2E_FRAC,
    SoftmaxConfig,
    exp2_lut,
    pack_logits,
    softmax,
    unpack_probabilities,
)

if TYPE_CHECKING:
    from tessera.hls.csim import CsimLibrary

__all__ = [
    "ENGINE",
    "ROWS_BITS",
    "csim_softmax",
    "exp_constants",
    "softmax_interface",
    "softmax_stream_case",
    "softmax_stream_inputs",
]

#: Width of the ``rows`` run-time argument.
ROWS_BITS = 32


def exp_constants(cfg: SoftmaxConfig) -> tuple[ConfigConstant, ...]:
    """The ``CONFIG_T`` members ``include/tessera/exp.h`` reads: formats and the exp2 table."""
    formats = (
        ConfigConstant("in_bits", cfg.in_bits, doc="logit width (signed)"),
        ConfigConstant("in_frac", cfg.in_frac, doc="logit fraction bits"),
        ConfigConstant("exp_frac", cfg.exp_frac, doc="fraction bits of exponentials and sums"),
        ConfigConstant("lut_bits", cfg.lut_bits, doc="exp2 table of 2**lut_bits + 1 entries"),
        ConfigConstant("interp_bits", cfg.interp_bits, doc="interpolated bits below the index"),
        ConfigConstant("log2e", LOG2E, doc="round(log2(e) * 2**log2e_frac)"),
        ConfigConstant("log2e_frac", LOG2E_FRAC, doc="fraction bits of log2e"),
        ConfigConstant("sum_bits", cfg.sum_bits, doc="width of a row sum"),
        ConfigConstant("recip_frac", cfg.recip_frac, doc="fraction bits of 1/sum"),
        ConfigConstant("recip_bits", cfg.recip_bits, doc="width of 1/sum"),
    )
    table = tuple(
        ConfigConstant(f"exp2_{k:03x}", int(v), doc=f"exp2 table entry {k}")
        for k, v in enumerate(exp2_lut(cfg))
    )
    return formats + table


def softmax_interface(cfg: SoftmaxConfig) -> KernelInterface:
    """The kernel interface of ``cfg``: ``CONFIG_T`` constants, streams and run-time arguments."""
    out_bits = cfg.out_container_bits
    constants = (
        *exp_constants(cfg),
        ConfigConstant("out_bits", cfg.out_bits, doc="probability width (unsigned)"),
        ConfigConstant("out_frac", cfg.out_frac, doc="probability fraction bits"),
        ConfigConstant("max_len", cfg.max_len, doc="longest row (row buffer words)"),
        ConfigConstant("len_bits", cfg.len_bits, doc="width of the length argument"),
        ConfigConstant("prob_shift", cfg.prob_shift, doc="exp * recip >> prob_shift = p"),
        ConfigConstant("in_container_bits", cfg.in_container_bits, doc="x beat width"),
        ConfigConstant("out_container_bits", out_bits, doc="p beat width"),
        ConfigConstant("rows_bits", ROWS_BITS, doc="width of the rows argument"),
    )
    streams = (
        StreamPort(
            "x",
            "in",
            "x_beat_t",
            cfg.in_container_bits // 8,
            doc=f"one logit per beat (signed {cfg.in_bits} bits, {cfg.in_frac} fraction bits)",
        ),
        StreamPort(
            "p",
            "out",
            "p_beat_t",
            out_bits // 8,
            lanes=1,
            lane_bits=out_bits,
            side_channels=True,
            doc=f"one probability per beat (unsigned {cfg.out_bits} bits, {cfg.out_frac} "
            "fraction bits); last on each row's last element",
        ),
    )
    scalars = (
        ScalarArg("rows", "rows_t", ROWS_BITS, doc="rows in this run"),
        ScalarArg("length", "length_t", cfg.len_bits, doc=f"row length, 1..{cfg.max_len}"),
    )
    return KernelInterface(
        engine="softmax",
        kernel="tessera::softmax",
        traits="tessera::softmax_types",
        base_config="tessera::softmax_config",
        headers=("axis.h", "exp.h", "softmax.h"),
        constants=constants,
        streams=streams,
        scalars=scalars,
    )


def _check_rows(cfg: SoftmaxConfig, x: npt.ArrayLike) -> np.ndarray:
    arr = cfg.check_logits(x)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"logits must have shape (rows, length) with length >= 1, got {arr.shape}")
    if arr.shape[1] > cfg.max_len:
        raise ValueError(
            f"row length {arr.shape[1]} exceeds max_len={cfg.max_len}: raise max_len in the config"
        )
    return arr


def softmax_stream_inputs(
    cfg: SoftmaxConfig, x: npt.ArrayLike
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Input stream and run-time arguments for which the engine computes ``softmax(x, cfg)``.

    Parameters
    ----------
    cfg : SoftmaxConfig
        Engine configuration.
    x : array_like of int, shape (rows, length)
        Raw logits, ``1 <= length <= max_len``.

    Returns
    -------
    inputs : dict
        ``{"x": bytes (rows * length, in_container_bits / 8)}`` as uint8.
    scalars : dict
        ``rows`` and ``length``.

    Raises
    ------
    ValueError
        Wrong shape, a row longer than ``max_len`` or logits outside ``in_bits``.
    """
    arr = _check_rows(cfg, x)
    nbytes = cfg.in_container_bits // 8
    data = np.frombuffer(pack_logits(arr, cfg), dtype=np.uint8).reshape(-1, nbytes)
    return {"x": data}, {"rows": int(arr.shape[0]), "length": int(arr.shape[1])}


def _expected_beats(cfg: SoftmaxConfig, probs: np.ndarray) -> OutputBeats:
    rows, length = probs.shape
    last = np.zeros((rows, length), dtype=bool)
    last[:, -1] = True
    values = probs.reshape(-1, 1).astype(np.int64)
    # Lanes come back signed: a probability with its top container bit set reads negative.
    bits = cfg.out_container_bits
    values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return OutputBeats(values, np.ones_like(values, dtype=bool), last.reshape(-1))


def softmax_stream_case(cfg: SoftmaxConfig, x: npt.ArrayLike, name: str = "") -> StreamCase:
    """A :class:`StreamCase` of rows ``x`` (rows, length) with the golden probabilities."""
    inputs, scalars = softmax_stream_inputs(cfg, x)
    expected = softmax(np.asarray(x), cfg)
    label = name or f"{scalars['rows']}x{scalars['length']}"
    return StreamCase(label, scalars, inputs, {"p": _expected_beats(cfg, expected)})


def _row_groups(rows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Consecutive rows of equal length, stacked (one kernel run each)."""
    groups: list[list[np.ndarray]] = []
    for row in rows:
        if groups and len(groups[-1][0]) == len(row):
            groups[-1].append(row)
        else:
            groups.append([row])
    return [np.stack(g) for g in groups]


def csim_softmax(
    cfg: SoftmaxConfig,
    x: npt.ArrayLike | Sequence[npt.ArrayLike],
    *,
    library: CsimLibrary | None = None,
) -> np.ndarray | list[np.ndarray]:
    """C-simulate the HLS softmax kernel of ``cfg``: the same result as ``models.softmax.softmax``.

    The logits go through the kernel's ``x`` stream packed as the RTL receives them
    (:func:`~tessera.sim.softmax.pack_logits`); the ``p`` stream is unpacked with
    :func:`~tessera.sim.softmax.unpack_probabilities` and its ``last`` / ``keep`` side channels are
    checked.

    Parameters
    ----------
    cfg : SoftmaxConfig
        Engine configuration.
    x : array_like of int, shape (rows, length), or a sequence of 1-D rows
        Raw logits. A sequence may hold rows of different lengths: each run of consecutive rows
        of one length is one kernel call.
    library : CsimLibrary, optional
        A library holding ``cfg`` (from :func:`tessera.hls.csim.build_csim`).

    Returns
    -------
    ndarray of int64, shape (rows, length), or list of 1-D arrays (for a sequence of rows)
        Probabilities with ``out_frac`` fraction bits.

    Raises
    ------
    ValueError
        Bad shapes or values (see :func:`softmax_stream_inputs`).
    CsimError
        A build failure, or the kernel broke the stream protocol.
    """
    from tessera.hls.csim import CsimError, csim_library

    if not isinstance(cfg, SoftmaxConfig):
        raise ValueError(f"cfg must be a SoftmaxConfig, got {type(cfg).__name__}")
    ragged = not isinstance(x, np.ndarray)
    if ragged:
        rows = [np.atleast_1d(np.asarray(r)) for r in x]
        if not rows or any(r.ndim != 1 for r in rows):
            raise ValueError("a sequence of rows must hold 1-D arrays, at least one")
        groups = _row_groups(rows)
    else:
        groups = [np.asarray(x)]
    lib = library if library is not None else csim_library(cfg)
    results = []
    for group in groups:
        inputs, scalars = softmax_stream_inputs(cfg, group)
        rows_n, length = scalars["rows"], scalars["length"]
        out = lib.run(cfg, inputs, scalars, {"p": rows_n * length})["p"]
        nbytes = cfg.out_container_bits // 8
        if len(out.values) != rows_n * length:
            raise CsimError(
                f"{cfg.short_name}: p stream has {len(out.values)} beats, "
                f"expected {rows_n * length}"
            )
        expected_last = np.zeros((rows_n, length), dtype=bool)
        expected_last[:, -1] = True
        bad = np.flatnonzero(out.last != expected_last.reshape(-1))
        if bad.size:
            i = int(bad[0])
            raise CsimError(f"{cfg.short_name}: p beat {i}: last={bool(out.last[i])}")
        if not out.valid.all():
            raise CsimError(f"{cfg.short_name}: p beat {int(np.flatnonzero(~out.valid)[0])}: keep")
        words = out.values[:, 0] & ((1 << (8 * nbytes)) - 1)
        data = words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()
        results.append(unpack_probabilities(data, cfg).reshape(rows_n, length))
    if not ragged:
        return results[0]
    return [row for group in results for row in group]


def _default_cases(cfg: SoftmaxConfig) -> list[StreamCase]:
    """Small testbench vectors: random, all-equal, one-spike, extreme, increasing rows, a
    one-element row and a full ``max_len`` row."""
    rng = np.random.default_rng(1)
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    n = min(8, cfg.max_len)
    spike = np.zeros((2, n), dtype=np.int64)
    spike[:, rng.integers(n)] = hi
    rows = {
        "random": rng.integers(lo, hi + 1, size=(3, n)),
        "equal": np.full((2, n), min(77, hi)),
        "spike": spike,
        "extreme": rng.choice(np.array([lo, hi]), size=(2, n)),
        "increasing": np.sort(rng.integers(lo, hi + 1, size=(1, n))),
        "one element": rng.integers(lo, hi + 1, size=(2, 1)),
        "max_len": rng.integers(lo, hi + 1, size=(1, cfg.max_len)),
    }
    return [softmax_stream_case(cfg, x.astype(np.int64), name) for name, x in rows.items()]


#: Registry entry of the softmax engine.
ENGINE = HlsEngine(
    name="softmax",
    config_type=SoftmaxConfig,
    interface=softmax_interface,
    default_cases=_default_cases,
)
