"""The LayerNorm engine in HLS: ``include/tessera/layernorm.h`` instantiated from a
:class:`~tessera.models.layernorm.LayerNormConfig`.

This module is the LayerNorm entry of the HLS engine registry (:data:`ENGINE`) and converts
between rows and the engine's streams with the golden model's own packing functions
(:func:`~tessera.models.layernorm.pack_rows`, :func:`~tessera.models.layernorm.pack_params`), so
the kernel sees exactly the bytes the RTL's AXI4-Stream ports carry:

- ``x`` (in): one element per beat of ``in_bytes`` bytes, sign-extended;
- ``params`` (in): one packet of ``dim`` beats, ``gamma`` in the low and ``beta`` in the high
  ``param_bytes`` bytes of each, read before the rows when ``load_params`` is 1;
- ``y`` (out): one output per beat of ``out_bytes`` bytes, ``TLAST`` on each row's last element.

Run-time arguments: ``rows`` (rows in this call, 32-bit, 0 allowed) and ``load_params`` (1: read a
``params`` packet first; 0: keep the ``gamma`` / ``beta`` of an earlier call). Unlike the RTL, the
input streams carry no ``TLAST``: rows are counted from ``rows`` (the RTL counts them too and only
checks ``TLAST``).

The reciprocal-square-root seed table is :func:`~tessera.models.layernorm.rsqrt_seed_table`,
written into the generated config as the constants ``rsqrt_seed_000`` ... (hex index).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tessera.hls.csim import CsimError, CsimLibrary, csim_library
from tessera.hls.engine import (
    ConfigConstant,
    HlsEngine,
    KernelInterface,
    OutputBeats,
    ScalarArg,
    StreamCase,
    StreamPort,
)
from tessera.models.layernorm import (
    LayerNormConfig,
    layernorm,
    pack_params,
    pack_rows,
    quantize_input,
    quantize_params,
    rsqrt_seed_table,
)

__all__ = [
    "ENGINE",
    "ROWS_BITS",
    "csim_layernorm",
    "layernorm_from_beats",
    "layernorm_interface",
    "layernorm_stream_case",
    "layernorm_stream_inputs",
    "seed_constant_name",
]

#: Width of the ``rows`` run-time argument.
ROWS_BITS = 32
# The config header's constants are 32-bit ``unsigned``: E is split at bit 31.
_EPS_SPLIT = 31


def seed_constant_name(index: int) -> str:
    """Name of seed table entry ``index`` in the generated config (``rsqrt_seed_03f``)."""
    return f"rsqrt_seed_{index:03x}"


def layernorm_interface(cfg: LayerNormConfig) -> KernelInterface:
    """The kernel interface of ``cfg``: ``CONFIG_T`` constants, streams and run-time arguments."""
    eps = cfg.eps_int
    constants = [
        ConfigConstant("dim", cfg.dim, doc="row length"),
        ConfigConstant("in_bits", cfg.in_bits, doc="input width (signed)"),
        ConfigConstant("in_bytes", cfg.in_bytes, doc="x beat bytes"),
        ConfigConstant("out_bits", cfg.out_bits, doc="output width (signed, saturated)"),
        ConfigConstant("out_bytes", cfg.out_bytes, doc="y beat bytes"),
        ConfigConstant("param_bits", cfg.param_bits, doc="gamma / beta width (signed)"),
        ConfigConstant("param_bytes", cfg.param_bytes, doc="bytes of gamma and of beta per beat"),
        ConfigConstant("rsqrt_lut_bits", cfg.rsqrt_lut_bits, doc="log2 of the seed table size"),
        ConfigConstant("newton_steps", cfg.newton_steps, doc="Newton iterations"),
        ConfigConstant("rsqrt_frac", cfg.rsqrt_frac, doc="fraction bits of u and y"),
        ConfigConstant("norm_frac", cfg.norm_frac, doc="fraction bits of z"),
        ConfigConstant("out_shift", cfg.out_shift, doc="norm_frac + param_frac - out_frac"),
        ConfigConstant("sum_bits", cfg.sum_bits, doc="signed width of S1"),
        ConfigConstant("square_sum_bits", cfg.square_sum_bits, doc="unsigned width of S2"),
        ConfigConstant("var_bits", cfg.var_bits, doc="unsigned width of W"),
        ConfigConstant("max_exponent", cfg.max_exponent, doc="largest e with W = u * 4**e"),
        ConfigConstant("mantissa_bits", cfg.mantissa_bits, doc="unsigned width of u and y"),
        ConfigConstant("center_bits", cfg.center_bits, doc="signed width of c"),
        ConfigConstant("norm_bits", cfg.norm_bits, doc="signed width of z"),
        ConfigConstant("eps_hi", eps >> _EPS_SPLIT, doc="E = eps_hi * 2**31 + eps_lo"),
        ConfigConstant("eps_lo", eps & ((1 << _EPS_SPLIT) - 1), doc=f"E = {eps}"),
        ConfigConstant("buffer_depth", cfg.buffer_depth, doc="element FIFO depth (two rows)"),
        ConfigConstant("rows_bits", ROWS_BITS, doc="width of the rows argument"),
    ]
    constants.extend(
        ConfigConstant(seed_constant_name(i), int(v), doc="rsqrt seed" if i == 0 else "")
        for i, v in enumerate(rsqrt_seed_table(cfg))
    )
    streams = (
        StreamPort(
            "x",
            "in",
            "x_beat_t",
            cfg.in_bytes,
            doc=f"rows of {cfg.dim} elements, one per beat (signed {cfg.in_bits}-bit, "
            "sign-extended)",
        ),
        StreamPort(
            "params",
            "in",
            "params_beat_t",
            2 * cfg.param_bytes,
            doc=f"when load_params: {cfg.dim} beats, gamma low half, beta high half",
        ),
        StreamPort(
            "y",
            "out",
            "y_beat_t",
            cfg.out_bytes,
            lanes=1,
            lane_bits=8 * cfg.out_bytes,
            side_channels=True,
            doc=f"outputs, one per beat (signed {cfg.out_bits}-bit), last at each row's end",
        ),
    )
    scalars = (
        ScalarArg("rows", "rows_t", ROWS_BITS, doc="rows to normalise in this call"),
        ScalarArg("load_params", "load_params_t", 1, doc="1: read a params packet first"),
    )
    return KernelInterface(
        engine="layernorm",
        kernel="tessera::layernorm",
        traits="tessera::layernorm_types",
        base_config="tessera::layernorm_config",
        headers=("axis.h", "requant.h", "layernorm.h"),
        constants=tuple(constants),
        streams=streams,
        scalars=scalars,
    )


def _rows_2d(x_raw: npt.ArrayLike, cfg: LayerNormConfig) -> np.ndarray:
    x = cfg.check_inputs(x_raw)  # validates dtype, shape (..., dim) and range
    return x.reshape(-1, cfg.dim)


def _beats(data: bytes, beat_bytes: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, beat_bytes)


def layernorm_stream_inputs(
    cfg: LayerNormConfig,
    x_raw: npt.ArrayLike,
    gamma_raw: npt.ArrayLike | None = None,
    beta_raw: npt.ArrayLike | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Input streams and run-time arguments that normalise the rows of ``x_raw``.

    Parameters
    ----------
    cfg : LayerNormConfig
        Engine configuration.
    x_raw : array_like of int, shape (..., dim)
        Raw inputs; every row of the leading axes is one row of the run.
    gamma_raw, beta_raw : array_like of int, shape (dim,), optional
        Raw weight and bias, sent as a ``params`` packet (``load_params = 1``). Both ``None``:
        no packet; the kernel keeps the parameters of an earlier call.

    Returns
    -------
    inputs : dict
        ``{"x": (rows * dim, in_bytes), "params": (dim or 0, 2 * param_bytes)}`` as uint8.
    scalars : dict
        ``rows`` and ``load_params``.

    Raises
    ------
    ValueError
        Inputs or parameters of the wrong shape, type or range, only one of ``gamma`` / ``beta``,
        or more rows than the ``rows`` argument holds.
    """
    x = _rows_2d(x_raw, cfg)
    if x.shape[0] >= 1 << ROWS_BITS:
        raise ValueError(f"{x.shape[0]} rows exceed the {ROWS_BITS}-bit rows argument")
    if (gamma_raw is None) != (beta_raw is None):
        raise ValueError("give both gamma and beta (a params packet) or neither (keep the loaded)")
    load = gamma_raw is not None
    if load:
        params = _beats(pack_params(gamma_raw, beta_raw, cfg), 2 * cfg.param_bytes)
    else:
        params = np.zeros((0, 2 * cfg.param_bytes), dtype=np.uint8)
    inputs = {"x": _beats(pack_rows(x, cfg), cfg.in_bytes), "params": params}
    return inputs, {"rows": int(x.shape[0]), "load_params": int(load)}


def _expected_beats(out: np.ndarray, cfg: LayerNormConfig) -> OutputBeats:
    values = np.asarray(out, dtype=np.int64).reshape(-1, 1)
    last = np.zeros(len(values), dtype=bool)
    last[cfg.dim - 1 :: cfg.dim] = True
    return OutputBeats(values, np.ones_like(values, dtype=bool), last)


def layernorm_stream_case(
    cfg: LayerNormConfig,
    x_raw: npt.ArrayLike,
    gamma_raw: npt.ArrayLike,
    beta_raw: npt.ArrayLike,
    name: str = "",
) -> StreamCase:
    """A :class:`StreamCase` (parameters loaded) with the golden model's ``y`` stream."""
    inputs, scalars = layernorm_stream_inputs(cfg, x_raw, gamma_raw, beta_raw)
    expected = layernorm(_rows_2d(x_raw, cfg), gamma_raw, beta_raw, cfg)
    label = name or f"{scalars['rows']} rows"
    return StreamCase(label, scalars, inputs, {"y": _expected_beats(expected, cfg)})


def layernorm_from_beats(cfg: LayerNormConfig, rows: int, y: OutputBeats) -> np.ndarray:
    """The ``(rows, dim)`` outputs of the engine's ``y`` beats, checking the stream protocol.

    Raises
    ------
    ValueError
        Wrong beat count, a lane whose ``keep`` is not set, a value outside ``out_bits``, or
        ``last`` anywhere but on each row's last element. The message names the first offending
        beat.
    """
    count = rows * cfg.dim
    if len(y.values) != count:
        raise ValueError(f"y stream has {len(y.values)} beats, expected {count} ({rows} rows)")
    bad = np.flatnonzero(~y.valid.all(axis=1))
    if bad.size:
        raise ValueError(f"y beat {int(bad[0])}: keep is not set")
    lo, hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    bad = np.flatnonzero((y.values[:, 0] < lo) | (y.values[:, 0] > hi))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"y beat {i}: {int(y.values[i, 0])} is outside {cfg.out_bits} bits")
    expected_last = _expected_beats(np.zeros(count, dtype=np.int64), cfg).last
    bad = np.flatnonzero(y.last != expected_last)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"y beat {i}: last={bool(y.last[i])}, expected {bool(expected_last[i])}")
    return y.values[:, 0].reshape(rows, cfg.dim)


def csim_layernorm(
    cfg: LayerNormConfig,
    x_raw: npt.ArrayLike,
    gamma_raw: npt.ArrayLike | None = None,
    beta_raw: npt.ArrayLike | None = None,
    *,
    library: CsimLibrary | None = None,
) -> np.ndarray:
    """C-simulate the HLS LayerNorm kernel of ``cfg``: the same result as ``models.layernorm``.

    Parameters
    ----------
    cfg : LayerNormConfig
        Engine configuration.
    x_raw : array_like of int, shape (..., dim)
        Raw inputs.
    gamma_raw, beta_raw : array_like of int, shape (dim,), optional
        Raw weight and bias, loaded before the rows. Both ``None``: the kernel uses the ones
        loaded by an earlier call on the same library (zeros if none was).
    library : CsimLibrary, optional
        A library holding ``cfg`` (from :func:`tessera.hls.csim.build_csim`); default
        :func:`tessera.hls.csim.csim_library`.

    Returns
    -------
    ndarray of int64, shape of ``x_raw``
        Raw outputs (``out_bits`` signed, ``out_frac`` fraction bits).

    Raises
    ------
    ValueError
        Inputs that do not fit the engine.
    CsimError
        A build failure, or the kernel broke the stream protocol.
    ToolError
        g++ or the ap_types headers are missing.
    """
    if not isinstance(cfg, LayerNormConfig):
        raise ValueError(f"cfg must be a LayerNormConfig, got {type(cfg).__name__}")
    shape = np.shape(x_raw)
    inputs, scalars = layernorm_stream_inputs(cfg, x_raw, gamma_raw, beta_raw)
    rows = scalars["rows"]
    lib = library if library is not None else csim_library(cfg)
    outputs = lib.run(cfg, inputs, scalars, {"y": rows * cfg.dim})
    try:
        return layernorm_from_beats(cfg, rows, outputs["y"]).reshape(shape)
    except ValueError as exc:
        raise CsimError(f"{cfg.short_name}: y stream protocol: {exc}") from None


def _default_cases(cfg: LayerNormConfig) -> list[StreamCase]:
    """Small testbench vectors: one row, activation-like rows, and extreme rows (zero variance at
    the minimum and maximum codes, a lone outlier, alternating extremes) with extreme params."""
    n = cfg.dim
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    plo, phi = -(1 << (cfg.param_bits - 1)), (1 << (cfg.param_bits - 1)) - 1
    rng = np.random.default_rng(0)
    scale = hi / (1 << cfg.in_frac) / 8
    x = quantize_input(rng.normal(size=(3, n)) * scale * rng.lognormal(0.0, 0.5, n), cfg)
    gamma, beta = quantize_params(rng.normal(1.0, 0.25, n), rng.normal(0.0, 0.5, n), cfg)
    extreme = np.zeros((5, n), dtype=np.int64)
    extreme[0], extreme[1] = lo, hi
    extreme[2, n // 2] = hi
    extreme[3] = np.where(np.arange(n) % 2, hi, lo)
    extreme[4] = rng.integers(lo, hi + 1, n)
    g_ext = rng.integers(plo, phi + 1, n)
    b_ext = rng.integers(plo, phi + 1, n)
    g_ext[0], b_ext[0] = phi, plo
    return [
        layernorm_stream_case(cfg, x[:1], gamma, beta, "one row"),
        layernorm_stream_case(cfg, x, gamma, beta, "activations"),
        layernorm_stream_case(cfg, extreme, g_ext, b_ext, "extremes"),
    ]


#: Registry entry of the LayerNorm engine.
ENGINE = HlsEngine(
    name="layernorm",
    config_type=LayerNormConfig,
    interface=layernorm_interface,
    default_cases=_default_cases,
)
