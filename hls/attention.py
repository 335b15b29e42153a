"""The attention engine in HLS: ``include/tessera/attention.h`` instantiated from an
:class:`AttentionConfig`.

This module is the attention entry of the HLS engine registry (:data:`ENGINE`) and converts
between ``(heads, S, head_dim)`` tensors and the engine's streams with the layout functions of
the golden model (:func:`~tessera.models.attention.attention_streams`,
:func:`~tessera.models.attention.output_beats`), so the kernel is checked against exactly the
stream order the RTL uses: the query rows once, K and V once per group of ``parallelism`` rows.
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
from tessera.hls.softmax import exp_constants
from tessera.models.attention import (
    AttentionConfig,
    AttentionMask,
    attention,
    attention_streams,
    output_beats,
    requant_for_scale,
)
from tessera.models.gemm import MULTIPLIER_BITS, Requant

__all__ = [
    "ENGINE",
    "attention_from_beats",
    "attention_interface",
    "attention_stream_case",
    "attention_stream_inputs",
    "csim_attention",
]

# Widths of the run-time arguments, as the RTL's registers hold them.
SHIFT_BITS = 6
MASK_BITS = 2
SINK_BITS = 32  # sink and window take any AttentionMask value; past max_seq they act as max_seq


def _seq_bits(cfg: AttentionConfig) -> int:
    return cfg.max_seq.bit_length()


def attention_interface(cfg: AttentionConfig) -> KernelInterface:
    """The kernel interface of ``cfg``: ``CONFIG_T`` constants, streams and run-time arguments."""
    sm = cfg.softmax
    constants = (
        ConfigConstant("heads", cfg.heads, doc="H, heads run one after the other"),
        ConfigConstant("head_dim", cfg.head_dim, doc="D, elements of a row"),
        ConfigConstant("lanes", cfg.lanes, doc="L, int8 elements per stream beat"),
        ConfigConstant("parallelism", cfg.parallelism, doc="P, query rows per group"),
        ConfigConstant("max_seq", cfg.max_seq, doc="longest sequence (score buffer depth)"),
        ConfigConstant("seq_bits", _seq_bits(cfg), doc="width of the seq_len argument"),
        ConfigConstant("score_bits", cfg.score_bits, doc="signed logits"),
        ConfigConstant("dot_bits", cfg.dot_bits, doc="signed exact q . k"),
        ConfigConstant("acc_bits", cfg.acc_bits, doc="signed exact sum_j w_j * v_j"),
        ConfigConstant("prob_shift", sm.prob_shift, doc="right shift from exp * recip to a weight"),
        ConfigConstant("weight_bits", cfg.weight_bits, doc="unsigned attention weights"),
        ConfigConstant("weight_frac", cfg.weight_frac, doc="fraction bits of the weights"),
        ConfigConstant(
            "rounding", f"AP_{cfg.rounding.value}", "ap_q_mode", "score requantization rounding"
        ),
        ConfigConstant(
            "overflow", f"AP_{cfg.overflow.value}", "ap_o_mode", "score requantization overflow"
        ),
        # The softmax unit's members that exp.h reads (widths, log2(e), the exp2 table).
        *exp_constants(sm),
    )
    row = f"{cfg.beats_per_row} beats of {cfg.lanes} int8 lanes"
    streams = (
        StreamPort(
            "q",
            "in",
            "beat_t",
            cfg.lanes,
            doc=f"query rows in (head, row) order, each {row}",
        ),
        StreamPort(
            "k",
            "in",
            "beat_t",
            cfg.lanes,
            doc=f"per head and group of {cfg.parallelism} queries: all S key rows, each {row}",
        ),
        StreamPort(
            "v",
            "in",
            "beat_t",
            cfg.lanes,
            doc=f"per head and group of {cfg.parallelism} queries: all S value rows, each {row}",
        ),
        StreamPort(
            "o",
            "out",
            "o_beat_t",
            cfg.lanes,
            lanes=cfg.lanes,
            lane_bits=8,
            side_channels=True,
            doc=f"output rows in (head, row) order, each {row}; last on the final beat",
        ),
    )
    scalars = (
        ScalarArg("seq_len", "seq_len_t", _seq_bits(cfg), doc=f"S, 1..{cfg.max_seq}"),
        ScalarArg("multiplier", "multiplier_t", MULTIPLIER_BITS, doc="score multiplier"),
        ScalarArg("shift", "shift_t", SHIFT_BITS, doc="score right shift"),
        ScalarArg("mask", "mask_t", MASK_BITS, doc="0 none, 1 causal, 2 lambda"),
        ScalarArg("sink", "sink_t", SINK_BITS, doc="lambda mask: leading keys every query sees"),
        ScalarArg("window", "window_t", SINK_BITS, doc="lambda mask: sliding window, >= 1"),
    )
    return KernelInterface(
        engine="attention",
        kernel="tessera::attention",
        traits="tessera::attention_types",
        base_config="tessera::attention_config",
        headers=("axis.h", "requant.h", "exp.h", "attention.h"),
        constants=constants,
        streams=streams,
        scalars=scalars,
    )


def attention_stream_inputs(
    cfg: AttentionConfig,
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    score_requant: Requant,
    mask: AttentionMask | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Input streams and run-time arguments for which the engine computes
    ``attention(q, k, v, cfg, score_requant, mask)``.

    Returns
    -------
    inputs : dict
        ``{"q", "k", "v"}``: bytes of shape (beats, lanes) as uint8, K and V repeated once per
        query group (:func:`~tessera.models.attention.attention_streams`).
    scalars : dict
        ``seq_len``, ``multiplier``, ``shift``, ``mask``, ``sink``, ``window``.

    Raises
    ------
    ValueError
        Operands that do not fit the engine (shape, sequence length, int8 range), a
        ``score_requant`` that is not a :class:`Requant` with zero point 0, or a ``mask`` that
        is not an :class:`AttentionMask`.
    """
    if not isinstance(score_requant, Requant):
        raise ValueError(f"score_requant must be a Requant, got {type(score_requant).__name__}")
    if score_requant.zero_point != 0:
        raise ValueError(
            f"score_requant.zero_point must be 0 (logits are centred), got "
            f"{score_requant.zero_point}"
        )
    mask = AttentionMask() if mask is None else mask
    if not isinstance(mask, AttentionMask):
        raise ValueError(f"mask must be an AttentionMask or None, got {type(mask).__name__}")
    streams = attention_streams(q, k, v, cfg)  # validates shapes, lengths and values
    inputs = {name: streams[name].view(np.uint8) for name in ("q", "k", "v")}
    scalars = {
        "seq_len": int(np.shape(q)[1]),
        "multiplier": score_requant.multiplier,
        "shift": score_requant.shift,
        "mask": mask.code,
        "sink": mask.sink,
        "window": mask.window,
    }
    return inputs, scalars


def attention_stream_case(
    cfg: AttentionConfig,
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    score_requant: Requant,
    mask: AttentionMask | None = None,
    name: str = "",
) -> StreamCase:
    """A :class:`StreamCase` with the golden model's ``o`` stream as the expected output."""
    inputs, scalars = attention_stream_inputs(cfg, q, k, v, score_requant, mask)
    values = output_beats(attention(q, k, v, cfg, score_requant, mask), cfg).astype(np.int64)
    last = np.zeros(len(values), dtype=bool)
    last[-1] = True
    kind = (mask or AttentionMask()).kind
    label = name or f"S={scalars['seq_len']} {kind}"
    return StreamCase(
        label, scalars, inputs, {"o": OutputBeats(values, np.ones(values.shape, bool), last)}
    )


def attention_from_beats(cfg: AttentionConfig, seq_len: int, o: OutputBeats) -> np.ndarray:
    """Reassemble the (heads, S, head_dim) output from the engine's ``o`` beats, checking the
    stream protocol.

    Raises
    ------
    ValueError
        If the beats are not what the engine must send: wrong count, a lane without all its
        ``keep`` bits, or ``last`` anywhere but on the final beat. The message names the first
        offending beat.
    """
    cfg.check_seq_len(seq_len)
    beats = cfg.heads * seq_len * cfg.beats_per_row
    if len(o.values) != beats:
        raise ValueError(
            f"o stream has {len(o.values)} beats, expected {beats} "
            f"(heads={cfg.heads} x S={seq_len} x {cfg.beats_per_row} beats per row)"
        )
    bad = np.flatnonzero(~o.valid.all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"o beat {i}: keep marks lanes {o.valid[i].astype(int).tolist()}")
    expected_last = np.zeros(beats, dtype=bool)
    expected_last[-1] = True
    bad = np.flatnonzero(o.last != expected_last)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"o beat {i}: last={bool(o.last[i])}, expected {not o.last[i]}")
    return o.values.reshape(cfg.heads, seq_len, cfg.head_dim)


def csim_attention(
    cfg: AttentionConfig,
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    score_requant: Requant,
    mask: AttentionMask | None = None,
    *,
    library: CsimLibrary | None = None,
) -> np.ndarray:
    """C-simulate the HLS attention kernel of ``cfg``: the same result as
    :func:`tessera.models.attention.attention`.

    Parameters
    ----------
    cfg : AttentionConfig
        Engine configuration.
    q, k, v : array_like of int, shape (heads, S, head_dim)
        int8-valued queries, keys and values, ``1 <= S <= max_seq``.
    score_requant : Requant
        Score requantization (zero point 0).
    mask : AttentionMask, optional
        Key visibility; default ``"none"``.
    library : CsimLibrary, optional
        A library holding ``cfg`` (from :func:`tessera.hls.csim.build_csim`); default
        :func:`tessera.hls.csim.csim_library`.

    Returns
    -------
    ndarray of int64, shape (heads, S, head_dim)

    Raises
    ------
    ValueError
        Operands that do not fit the engine.
    CsimError
        A build failure, or the kernel broke the stream protocol.
    ToolError
        g++ or the ap_types headers are missing.
    """
    if not isinstance(cfg, AttentionConfig):
        raise ValueError(f"cfg must be an AttentionConfig, got {type(cfg).__name__}")
    inputs, scalars = attention_stream_inputs(cfg, q, k, v, score_requant, mask)
    seq_len = scalars["seq_len"]
    beats = cfg.heads * seq_len * cfg.beats_per_row
    lib = library if library is not None else csim_library(cfg)
    outputs = lib.run(cfg, inputs, scalars, {"o": beats})
    try:
        return attention_from_beats(cfg, seq_len, outputs["o"])
    except ValueError as exc:
        raise CsimError(f"{cfg.short_name}: o stream protocol: {exc}") from None


def _operands(
    cfg: AttentionConfig, seq_len: int, seed: int, data: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (cfg.heads, seq_len, cfg.head_dim)
    if data == "extreme":
        q = rng.integers(0, 128, size=shape)
        k = rng.integers(-8, 9, size=shape)
        k[:, rng.integers(0, seq_len)] = 127
        v = rng.choice(np.array([-128, 127]), size=shape)
    else:
        q = np.clip(np.round(rng.normal(0.0, 48.0, size=shape)), -128, 127)
        k = np.clip(np.round(rng.normal(0.0, 48.0, size=shape)), -128, 127)
        v = rng.integers(-128, 128, size=shape)
    return q.astype(np.int8), k.astype(np.int8), v.astype(np.int8)


def _default_cases(cfg: AttentionConfig) -> list[StreamCase]:
    """Small testbench vectors: S = 1, an odd S with a short last group under each mask, and
    a saturating extreme case."""
    scale = requant_for_scale(1 / (48.0 * 48.0 * np.sqrt(cfg.head_dim)), cfg)
    odd = min(2 * cfg.parallelism + 1, cfg.max_seq)
    specs = [
        ("S=1", 1, AttentionMask(), scale, "random"),
        ("odd S causal", odd, AttentionMask("causal"), scale, "random"),
        ("odd S lambda", odd, AttentionMask("lambda", sink=1, window=2), scale, "random"),
        ("extremes saturating", min(5, cfg.max_seq), AttentionMask(), Requant(1 << 30, 29), "x"),
    ]
    cases = []
    for seed, (name, seq_len, mask, requant, data) in enumerate(specs):
        q, k, v = _operands(cfg, seq_len, seed, "extreme" if data == "x" else data)
        cases.append(attention_stream_case(cfg, q, k, v, requant, mask, name))
    return cases


#: Registry entry of the attention engine.
ENGINE = HlsEngine(
    name="attention",
    config_type=AttentionConfig,
    interface=attention_interface,
    default_cases=_default_cases,
)
