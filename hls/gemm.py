"""The GEMM engine in HLS: ``include/tessera/gemm.h`` instantiated from a :class:`GemmConfig`.

This module is the GEMM entry of the HLS engine registry (:data:`ENGINE`) and converts between
matrices and the engine's streams, with the layout functions of the golden model
(:func:`~tessera.models.gemm.stream_operands`, :func:`~tessera.models.gemm.pack_stream`,
:func:`~tessera.models.gemm.output_beats`), so the kernel is checked against exactly the stream
order the RTL uses.
"""

from __future__ import annotations

import numpy as np

from tessera.hls.engine import (
    ConfigConstant,
    HlsEngine,
    KernelInterface,
    OutputBeats,
    ScalarArg,
    StreamCase,
    StreamPort,
)
from tessera.models.gemm import (
    MULTIPLIER_BITS,
    GemmConfig,
    Requant,
    gemm,
    gemm_tiles,
    output_beats,
    pack_stream,
    stream_operands,
)

__all__ = [
    "ENGINE",
    "LANE_BITS",
    "gemm_from_beats",
    "gemm_interface",
    "gemm_stream_case",
    "gemm_stream_inputs",
]

#: Width of a C stream lane: raw accumulators and requantized values, sign-extended.
LANE_BITS = 32
# Widths of the run-time arguments, as the RTL's registers hold them.
SHIFT_BITS = 6
ZERO_POINT_BITS = 16


def gemm_interface(cfg: GemmConfig) -> KernelInterface:
    """The kernel interface of ``cfg``: ``CONFIG_T`` constants, streams and run-time arguments."""
    constants = (
        ConfigConstant("rows", cfg.rows, doc="MAC array rows (A lanes per slice)"),
        ConfigConstant("cols", cfg.cols, doc="MAC array columns (B lanes, C lanes per beat)"),
        ConfigConstant("acc_bits", cfg.acc_bits, doc="accumulator width; sums wrap"),
        ConfigConstant("out_bits", cfg.out_bits, doc="requantized output width (signed)"),
        ConfigConstant("dim_bits", cfg.dim_bits, doc="width of M, N, K"),
        ConfigConstant("a_beat_bytes", cfg.a_beat_bytes, doc="A bus width in bytes"),
        ConfigConstant("b_beat_bytes", cfg.b_beat_bytes, doc="B bus width in bytes"),
        ConfigConstant("lane_bits", LANE_BITS, doc="C lane width"),
        ConfigConstant(
            "rounding", f"AP_{cfg.rounding.value}", "ap_q_mode", "requantization rounding"
        ),
        ConfigConstant(
            "overflow", f"AP_{cfg.overflow.value}", "ap_o_mode", "requantization overflow"
        ),
    )
    streams = (
        StreamPort(
            "a",
            "in",
            "a_beat_t",
            cfg.a_beat_bytes,
            doc=f"A k-slices ({cfg.rows} int8 lanes) in tile order, packed into bus beats",
        ),
        StreamPort(
            "b",
            "in",
            "b_beat_t",
            cfg.b_beat_bytes,
            doc=f"B k-slices ({cfg.cols} int8 lanes) in tile order, packed into bus beats",
        ),
        StreamPort(
            "c",
            "out",
            "c_beat_t",
            cfg.cols * LANE_BITS // 8,
            lanes=cfg.cols,
            lane_bits=LANE_BITS,
            side_channels=True,
            doc="C tile rows: cols signed 32-bit lanes, keep clears lanes past N, last at the end",
        ),
    )
    scalars = (
        ScalarArg("m", "dim_t", cfg.dim_bits, doc="rows of A and C"),
        ScalarArg("n", "dim_t", cfg.dim_bits, doc="columns of B and C"),
        ScalarArg("k", "dim_t", cfg.dim_bits, doc="columns of A, rows of B"),
        ScalarArg("raw", "raw_t", 1, doc="1: raw accumulators on C, 0: requantized"),
        ScalarArg("multiplier", "multiplier_t", MULTIPLIER_BITS, doc="requantization multiplier"),
        ScalarArg("shift", "shift_t", SHIFT_BITS, doc="requantization right shift"),
        ScalarArg("zero_point", "zero_point_t", ZERO_POINT_BITS, True, doc="output zero point"),
    )
    return KernelInterface(
        engine="gemm",
        kernel="tessera::gemm",
        traits="tessera::gemm_types",
        base_config="tessera::gemm_config",
        headers=("axis.h", "requant.h", "stream.h", "gemm.h"),
        constants=constants,
        streams=streams,
        scalars=scalars,
    )


def _beats(data: bytes, beat_bytes: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, beat_bytes)


def gemm_stream_inputs(
    cfg: GemmConfig, a: np.ndarray, b: np.ndarray, requant: Requant | None = None
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Input streams and run-time arguments for which the engine computes ``gemm(a, b, cfg, rq)``.

    Returns
    -------
    inputs : dict
        ``{"a": bytes (beats, a_beat_bytes), "b": bytes (beats, b_beat_bytes)}`` as uint8.
    scalars : dict
        ``m``, ``n``, ``k``, ``raw``, ``multiplier``, ``shift``, ``zero_point``.

    Raises
    ------
    ValueError
        If the operands do not fit the engine (shape, size registers, int8 range).
    """
    if requant is not None and not isinstance(requant, Requant):
        raise ValueError(f"requant must be a Requant or None, got {type(requant).__name__}")
    a_slices, b_slices = stream_operands(a, b, cfg)  # validates shapes and values
    m, k = np.shape(a)
    n = np.shape(b)[1]
    rq = requant or Requant(0, 0, 0)
    inputs = {
        "a": _beats(pack_stream(a_slices, cfg.a_beat_bytes), cfg.a_beat_bytes),
        "b": _beats(pack_stream(b_slices, cfg.b_beat_bytes), cfg.b_beat_bytes),
    }
    scalars = {
        "m": int(m),
        "n": int(n),
        "k": int(k),
        "raw": int(requant is None),
        "multiplier": rq.multiplier,
        "shift": rq.shift,
        "zero_point": rq.zero_point,
    }
    return inputs, scalars


def gemm_stream_case(
    cfg: GemmConfig,
    a: np.ndarray,
    b: np.ndarray,
    requant: Requant | None = None,
    name: str = "",
) -> StreamCase:
    """A :class:`StreamCase` with the golden model's C stream as the expected output."""
    inputs, scalars = gemm_stream_inputs(cfg, a, b, requant)
    values, valid = output_beats(gemm(a, b, cfg, requant), cfg)
    last = np.zeros(len(values), dtype=bool)
    last[-1] = True
    label = name or f"{scalars['m']}x{scalars['n']}x{scalars['k']}"
    return StreamCase(label, scalars, inputs, {"c": OutputBeats(values, valid, last)})


def gemm_from_beats(cfg: GemmConfig, m: int, n: int, c: OutputBeats) -> np.ndarray:
    """Reassemble C (M x N) from the engine's C beats, checking the stream protocol.

    Raises
    ------
    ValueError
        If the beats are not what the engine must send for an M x N result: wrong count, a
        ``keep`` pattern other than the valid lanes, invalid lanes not zero, or ``last`` anywhere
        but on the final beat. The message names the first offending beat.
    """
    # The golden layout function applied to element indices says where every lane belongs.
    index, valid = output_beats(np.arange(m * n, dtype=np.int64).reshape(m, n), cfg)
    tiles_n = gemm_tiles(m, n, cfg)[1]
    if len(c.values) != len(index):
        raise ValueError(
            f"C stream has {len(c.values)} beats, expected {len(index)} "
            f"({tiles_n} tile columns x M={m})"
        )
    bad = np.flatnonzero((c.valid != valid).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"C beat {i}: keep marks lanes {c.valid[i].astype(int).tolist()}, "
            f"expected {valid[i].astype(int).tolist()}"
        )
    bad = np.flatnonzero(((c.values != 0) & ~valid).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"C beat {i}: lanes past N are not zero: {c.values[i].tolist()}")
    expected_last = np.zeros(len(index), dtype=bool)
    expected_last[-1] = True
    bad = np.flatnonzero(c.last != expected_last)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"C beat {i}: last={bool(c.last[i])}, expected {not c.last[i]}")
    out = np.zeros(m * n, dtype=np.int64)
    out[index[valid]] = c.values[valid]
    return out.reshape(m, n)


def _default_cases(cfg: GemmConfig) -> list[StreamCase]:
    """Small testbench vectors: a 1x1x1 run, edge tiles, extremes and requantization."""
    rq = Requant(multiplier=1_518_500_250, shift=40, zero_point=-5)

    def dims(m: int, n: int, k: int) -> tuple[int, int, int]:
        return min(m, cfg.max_dim), min(n, cfg.max_dim), min(k, cfg.max_dim)

    cases = []
    specs = [
        ("1x1x1 raw", dims(1, 1, 1), None, "random"),
        ("edge tiles requantized", dims(2 * cfg.rows + 1, cfg.cols + 3, 7), rq, "random"),
        ("extremes raw", dims(cfg.rows + 3, 2 * cfg.cols - 1, 16), None, "extreme"),
        ("extremes saturating", dims(cfg.rows, cfg.cols, 9), Requant(1 << 30, 30), "extreme"),
    ]
    for seed, (name, (m, n, k), requant, data) in enumerate(specs):
        rng = np.random.default_rng(seed)
        if data == "extreme":
            a = rng.choice(np.array([-128, 127], dtype=np.int8), size=(m, k))
            b = rng.choice(np.array([-128, 127], dtype=np.int8), size=(k, n))
        else:
            a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
            b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
        cases.append(gemm_stream_case(cfg, a, b, requant, name))
    return cases


#: Registry entry of the GEMM engine.
ENGINE = HlsEngine(
    name="gemm",
    config_type=GemmConfig,
    interface=gemm_interface,
    default_cases=_default_cases,
)
